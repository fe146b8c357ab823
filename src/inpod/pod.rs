//! One enrolled pod's proxy: listeners bound inside the pod's network namespace, upstream
//! sockets created there with the tunnel's mark, and a drain that ends them all.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

use super::snapshot::NetnsId;
use super::zds::WorkloadInfo;
use crate::config::{Config, InpodConfig, ProxyWorkloadInfo};
use crate::drain::{ConnectionTasks, DrainOutcome};
use crate::identity::{Identity, SecretManager};
use crate::metrics::Metrics;
use crate::proxy::{Delivery, ListenError, ListenerSet, ProxyInputs, Scope};
use crate::socket::SocketFactory;
use crate::state::StateHandle;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the netns file descriptor is unusable: {0}")]
    Netns(#[source] NetnsError),
    #[error("inside the pod's network namespace: {0}")]
    Listen(#[from] ListenError),
}

/// What every pod proxy on this node shares.
#[derive(Clone)]
pub struct PodContext {
    pub config: Arc<Config>,
    pub state: StateHandle,
    pub certs: Arc<SecretManager>,
    pub metrics: Arc<Metrics>,
    /// The shared-mode settings: the agent's socket, the mark on every socket opened inside a
    /// pod, SO_REUSEPORT on the pod's listeners.
    pub inpod: InpodConfig,
}

/// A running pod proxy. Dropping it without [`drain`](Self::drain) aborts its listeners but
/// leaves live connections to end on their own.
pub struct PodProxy {
    uid: String,
    netns_id: NetnsId,
    identity: Identity,
    listeners: ListenerSet,
}

impl PodProxy {
    /// Binds 15001, 15006 and 15008 inside the pod's namespace and starts serving them, as
    /// the workload `info` names (the manager refuses an add without it).
    pub async fn start(
        ctx: &PodContext,
        uid: &str,
        info: &WorkloadInfo,
        netns: OwnedFd,
    ) -> Result<PodProxy, PodError> {
        let netns = Arc::new(
            NetnsHandle::from_fd(netns, "the fd from the node agent").map_err(PodError::Netns)?,
        );
        let netns_id = netns.id();
        if ctx.inpod.port_reuse {
            // Before binding: a replacement tunnel may take over these listeners at any time.
            match netns
                .run_async(super::handover::enable_in_current_netns)
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => super::handover::report_failure(uid, &error),
                Err(error) => return Err(PodError::Netns(error)),
            }
        }
        let sockets = SocketFactory::in_netns(netns, Some(ctx.inpod.mark))
            .with_port_reuse(ctx.inpod.port_reuse);

        // The pod is exactly the workload the agent named, never "any workload of this node".
        let scope = Scope {
            node: None,
            workload: Some(ProxyWorkloadInfo {
                namespace: info.namespace.clone(),
                name: info.name.clone(),
                service_account: info.service_account.clone(),
            }),
        };
        let identity = identity_of(ctx, info);
        let inputs = Arc::new(ProxyInputs::new(
            ctx.config.clone(),
            ctx.state.clone(),
            ctx.certs.clone(),
            sockets.clone(),
            ctx.metrics.clone(),
            scope,
            Delivery::PreserveClient,
        ));
        // The pod's listeners and its upstream sockets share one factory: both live in the
        // pod's namespace and carry the mark.
        let listeners = ListenerSet::start(inputs, &sockets).await?;
        // Issue the certificate now so the first connection does not wait for it. A failure
        // here is not fatal: each connection retries the fetch.
        let certs = ctx.certs.clone();
        let (prefetch, pod_uid) = (identity.clone(), uid.to_owned());
        tokio::spawn(async move {
            if let Err(error) = certs.fetch(&prefetch).await {
                tracing::warn!(uid = %pod_uid, identity = %prefetch, %error, "cannot prefetch the pod's certificate");
            }
        });
        Ok(PodProxy {
            uid: uid.to_owned(),
            netns_id,
            identity,
            listeners,
        })
    }

    pub fn netns_id(&self) -> NetnsId {
        self.netns_id
    }

    /// The pod's SPIFFE identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Live connections of this pod.
    pub fn connections(&self) -> usize {
        self.listeners.inputs().tasks.len()
    }

    /// A handle on the pod's connection tasks (for counting them later).
    pub fn connection_tasks(&self) -> ConnectionTasks {
        self.listeners.inputs().tasks.clone()
    }

    /// Stops accepting: returns once the pod's listeners are closed, so a connection
    /// attempted afterwards is refused. Live connections are untouched until
    /// [`drain`](Self::drain).
    pub async fn stop_listening(&mut self) {
        self.listeners.stop_listening().await;
    }

    /// The drain: live connections get up to `deadline`, then are cut; the namespace handle
    /// and every socket of the pod are closed when it completes. Stops listening first if
    /// [`stop_listening`](Self::stop_listening) was not awaited.
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        let PodProxy { uid, listeners, .. } = self;
        let outcome = listeners.drain(deadline).await;
        if outcome.cut > 0 {
            tracing::warn!(%uid, connections = outcome.cut, "drain deadline reached; connections cut");
        }
        // The set held the last reference to the pod's pool and socket factory: pooled HBONE
        // connections and the namespace fd are closed by now.
        tracing::info!(%uid, "pod proxy stopped");
        outcome
    }
}

/// The identity the pod's certificate is for: the mesh state's view of the workload when it
/// knows it (it carries the trust domain), else the node's default trust domain.
fn identity_of(ctx: &PodContext, info: &WorkloadInfo) -> Identity {
    let state = ctx.state.read();
    let known = state
        .workloads()
        .find(|w| {
            w.namespace == info.namespace
                && w.name == info.name
                && w.service_account == info.service_account
        })
        .map(|w| w.identity());
    known.unwrap_or_else(|| {
        Identity::new(
            ctx.config.trust_domain.clone(),
            info.namespace.clone(),
            info.service_account.clone(),
        )
    })
}
