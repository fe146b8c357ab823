//! One enrolled pod's proxy: listeners bound inside the pod's network namespace, upstream
//! sockets created there with the tunnel's mark, and a drain that ends them all.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};
use tokio::task::JoinHandle;

use super::snapshot::NetnsId;
use super::zds::WorkloadInfo;
use crate::config::{Config, ProxyWorkloadInfo, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::drain::{ConnectionTasks, DrainOutcome};
use crate::hbone::pool::Pool;
use crate::identity::{Identity, SecretManager};
use crate::metrics::Metrics;
use crate::proxy::{inbound, inbound_plain, outbound, Delivery, ProxyInputs, Scope};
use crate::socket::SocketFactory;
use crate::state::StateHandle;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the netns file descriptor is unusable: {0}")]
    Netns(#[source] NetnsError),
    #[error("cannot listen on {addr} ({what}) inside the pod's network namespace: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What every pod proxy on this node shares.
#[derive(Clone)]
pub struct PodContext {
    pub config: Arc<Config>,
    pub state: StateHandle,
    pub certs: Arc<SecretManager>,
    pub metrics: Arc<Metrics>,
    /// SO_MARK on every socket opened inside a pod.
    pub mark: u32,
    /// SO_REUSEPORT on the pod's listeners.
    pub port_reuse: bool,
}

/// A running pod proxy. Dropping it without [`stop`](Self::stop) aborts its listeners but
/// leaves live connections to end on their own.
pub struct PodProxy {
    uid: String,
    netns_id: NetnsId,
    identity: Option<Identity>,
    inputs: Arc<ProxyInputs>,
    listeners: Vec<JoinHandle<()>>,
}

impl PodProxy {
    /// Binds 15001, 15006 and 15008 inside the pod's namespace and starts serving them.
    pub async fn start(
        ctx: &PodContext,
        uid: &str,
        info: Option<&WorkloadInfo>,
        netns: OwnedFd,
    ) -> Result<PodProxy, PodError> {
        let netns = Arc::new(
            NetnsHandle::from_fd(netns, "the fd from the node agent").map_err(PodError::Netns)?,
        );
        let netns_id = netns.id();
        let sockets =
            SocketFactory::in_netns(netns, Some(ctx.mark)).with_port_reuse(ctx.port_reuse);
        let bind_ip = ctx.config.bind_ip;
        let outbound_listener =
            listen(&sockets, bind_ip, OUTBOUND_PORT, "outbound capture").await?;
        let plaintext_listener = listen(
            &sockets,
            bind_ip,
            INBOUND_PLAINTEXT_PORT,
            "inbound plaintext",
        )
        .await?;
        let hbone_listener = listen(&sockets, bind_ip, HBONE_PORT, "inbound HBONE").await?;

        // With workload info the pod is exactly that workload; without (older agents) it is
        // any workload of this node that its traffic comes from.
        let scope = Scope {
            node: if info.is_none() {
                ctx.config.node_name.clone()
            } else {
                None
            },
            workload: info.map(|i| ProxyWorkloadInfo {
                namespace: i.namespace.clone(),
                name: i.name.clone(),
                service_account: i.service_account.clone(),
            }),
        };
        let identity = info.map(|i| identity_of(ctx, i));
        let inputs = Arc::new(ProxyInputs {
            config: ctx.config.clone(),
            state: ctx.state.clone(),
            certs: ctx.certs.clone(),
            pool: Pool::new(ctx.config.pool.clone()),
            sockets,
            metrics: ctx.metrics.clone(),
            scope,
            delivery: Delivery::PreserveClient,
            tasks: ConnectionTasks::new(),
        });
        let listeners = vec![
            tokio::spawn(outbound::run(inputs.clone(), outbound_listener)),
            tokio::spawn(inbound_plain::run(inputs.clone(), plaintext_listener)),
            tokio::spawn(inbound::run(inputs.clone(), hbone_listener)),
        ];
        if let Some(identity) = identity.clone() {
            // Issue the certificate now so the first connection does not wait for it. A
            // failure here is not fatal: each connection retries the fetch.
            let certs = ctx.certs.clone();
            let uid = uid.to_owned();
            tokio::spawn(async move {
                if let Err(error) = certs.fetch(&identity).await {
                    tracing::warn!(%uid, %identity, %error, "cannot prefetch the pod's certificate");
                }
            });
        }
        Ok(PodProxy {
            uid: uid.to_owned(),
            netns_id,
            identity,
            inputs,
            listeners,
        })
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn netns_id(&self) -> NetnsId {
        self.netns_id
    }

    /// The pod's SPIFFE identity, when the agent said who the pod is.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Live connections of this pod.
    pub fn connections(&self) -> usize {
        self.inputs.tasks.len()
    }

    /// A handle on the pod's connection tasks (for counting them later).
    pub fn connection_tasks(&self) -> ConnectionTasks {
        self.inputs.tasks.clone()
    }

    /// Stops accepting: returns once the pod's listeners are closed, so a connection
    /// attempted afterwards is refused. Live connections are untouched until
    /// [`drain`](Self::drain).
    pub async fn stop_listening(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        // An aborted task drops its listener when it is next polled; wait for that.
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
    }

    /// The drain: live connections get up to `deadline`, then are cut; the namespace handle
    /// and every socket of the pod are closed when it completes. Stops listening first if
    /// [`stop_listening`](Self::stop_listening) was not awaited.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        self.stop_listening().await;
        let outcome = self.inputs.tasks.drain(deadline).await;
        let uid = &self.uid;
        if outcome.cut > 0 {
            tracing::warn!(%uid, connections = outcome.cut, "drain deadline reached; connections cut");
        }
        tracing::info!(%uid, "pod proxy stopped");
        // Last reference to the pod's pool and socket factory: pooled HBONE connections and
        // the namespace fd close here.
        drop(self);
        outcome
    }
}

/// A listener on `ip:port` inside the factory's namespace; errors say which one.
async fn listen(
    sockets: &SocketFactory,
    ip: std::net::IpAddr,
    port: u16,
    what: &'static str,
) -> Result<tokio::net::TcpListener, PodError> {
    let addr = SocketAddr::new(ip, port);
    sockets
        .listen_async(addr)
        .await
        .map_err(|source| PodError::Listen { addr, what, source })
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
