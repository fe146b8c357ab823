//! The data path: outbound capture (15001), inbound HBONE (15008), inbound plaintext (15006),
//! and what they share: the plain upstream connect, the byte copy, the access record.
//!
//! Each path first decides (outbound: [`outbound::route`]; inbound: the target workload, then
//! the authorize step), builds its access record once from that decision, then executes it.

mod access;
pub mod admission;
mod connect;
pub mod copy;
mod double_hbone;
mod error;
mod gateway;
pub mod inbound;
pub mod inbound_plain;
mod listeners;
pub mod live;
pub mod lookup;
pub mod outbound;
pub mod traffic;
mod waypoint_guard;

pub use error::ProxyError;
pub use listeners::{ListenError, ListenerSet};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nodetunnel_base::accept;

use crate::authz::{self, AllowReason, ConnectionInfo, Decision};
use crate::config::Config;
use crate::drain::ConnectionTasks;
use crate::hbone::connector::Connector;
use crate::hbone::pool::Pool;
use crate::identity::{Identity, SecretManager};
use crate::metrics::Metrics;
use crate::socket::SocketFactory;
use crate::state::{StateHandle, Store, Workload};
use live::{LiveConnections, Registration};

/// Which workloads this tunnel serves: those on its node (`NODE_NAME`), narrowed to one
/// workload by `PROXY_WORKLOAD_INFO` in dedicated mode. With neither set, every workload in the
/// config is local (a single-node mesh).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub node: Option<String>,
    pub workload: Option<crate::config::ProxyWorkloadInfo>,
}

impl Scope {
    pub fn serves(&self, w: &Workload) -> bool {
        let node_ok = self.node.as_ref().is_none_or(|n| *n == w.node);
        let workload_ok = self.workload.as_ref().is_none_or(|info| {
            info.namespace == w.namespace
                && info.name == w.name
                && info.service_account == w.service_account
        });
        node_ok && workload_ok
    }

    /// The workload of this scope holding `ip` on `network`. Several workloads may claim one
    /// address (a reused pod IP whose old pod is not removed yet). The one chosen decides which
    /// identity the connection carries, so when workloads of this scope with different
    /// identities claim it the answer is "ambiguous", never a guess; when they share one
    /// identity, ztunnel's preference picks among them.
    pub fn local_workload(
        &self,
        store: &Store,
        network: &str,
        ip: IpAddr,
    ) -> Result<Arc<Workload>, LocalMiss> {
        let claimants = store.workloads_at(network, ip);
        let ours = || claimants.iter().filter(|w| self.serves(w));
        let Some(first) = ours().next() else {
            return Err(LocalMiss::Unknown);
        };
        if ours().any(|w| {
            w.trust_domain != first.trust_domain
                || w.namespace != first.namespace
                || w.service_account != first.service_account
        }) {
            return Err(LocalMiss::Ambiguous(
                ours().map(|w| w.uid.clone()).collect(),
            ));
        }
        Ok(crate::state::preferred_claimant(ours())
            .unwrap_or(first)
            .clone())
    }
}

/// Why no local workload was found for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalMiss {
    /// No workload of this scope holds it (yet).
    Unknown,
    /// Several workloads of this scope hold it (their uids): which identity to use is unknown.
    Ambiguous(Vec<String>),
}

/// How long a connection waits for its local workload to arrive over xDS, as ztunnel waits: a
/// pod is enrolled (ZDS) and may connect before the control plane's push reaches the tunnel.
pub const LOCAL_WORKLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How inbound connections reach the local app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// From an address the kernel picks (dedicated mode: no rules route replies back to a
    /// foreign source).
    KernelSource,
    /// From the original client's address (IP_TRANSPARENT), so the app sees the real client.
    /// Needs the in-pod rules, which route the app's replies back to the tunnel.
    PreserveClient,
}

/// Everything a listener needs to proxy a connection; shared by one listener group (the
/// dedicated tunnel, or one pod in shared mode). Build it with [`ProxyInputs::new`].
pub struct ProxyInputs {
    pub config: Arc<Config>,
    pub state: StateHandle,
    pub certs: Arc<SecretManager>,
    /// Outbound HBONE connections, opened with this group's certificates and sockets. One per
    /// listener group: in shared mode they are sockets inside one pod's namespace and must
    /// never carry another pod's traffic.
    pub pool: Pool,
    /// Creates upstream sockets (marked, in the right namespace).
    pub sockets: SocketFactory,
    pub metrics: Arc<Metrics>,
    pub scope: Scope,
    pub delivery: Delivery,
    /// Every connection task of this group, for draining.
    pub tasks: ConnectionTasks,
    /// This group's admitted inbound connections, authorized again after every state change
    /// (unless `ENFORCE_POLICY_ON_LIVE_CONNECTIONS=false`, when nothing registers here).
    pub live: Arc<LiveConnections>,
    /// Looks up service endpoints known by hostname only (shared by every group).
    pub lookup: Arc<lookup::HostLookup>,
    /// Caps on inbound HBONE connections, shared by every group of the process.
    pub inbound_limits: Arc<admission::ConnectionLimits>,
    /// The pool's connector, for connections that are never pooled: double HBONE's outer
    /// layer, which carries exactly one inner connection (`double_hbone.rs`).
    pub connector: Connector,
}

/// Accepts connections until the task is dropped, running `handle` for each (with the peer's
/// address canonical: an IPv4 client on a dual-stack socket as IPv4) on its own task in
/// `tasks`. Failed accepts are retried by [`accept::serve`].
pub(crate) async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    pi: &ProxyInputs,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept::serve(listener, what, |stream, peer| {
        pi.keep_alive(&stream);
        pi.tasks
            .spawn(handle(stream, crate::socket::canonical(peer)));
    })
    .await
}

impl ProxyInputs {
    /// Inputs for one listener group, with a new HBONE pool that dials with `certs` and
    /// `sockets` and a new, empty set of connection tasks. Needs a tokio runtime (the pool
    /// starts its idle sweeper).
    pub fn new(
        config: Arc<Config>,
        state: StateHandle,
        certs: Arc<SecretManager>,
        sockets: SocketFactory,
        metrics: Arc<Metrics>,
        scope: Scope,
        delivery: Delivery,
    ) -> ProxyInputs {
        let sockets = sockets.with_keepalive(config.keepalive);
        let inbound_limits = admission::shared(
            config.hbone.max_connections,
            config.hbone.max_connections_per_ip,
        );
        let connector = Connector::new(
            certs.clone(),
            sockets.clone(),
            config.connect_timeout,
            config.hbone.ping,
            metrics.hbone_connections_opened.clone(),
        );
        ProxyInputs {
            pool: Pool::new(config.pool.clone(), connector.clone(), metrics.pool.clone()),
            connector,
            config,
            state,
            certs,
            sockets,
            metrics,
            scope,
            delivery,
            tasks: ConnectionTasks::new(),
            live: Arc::new(LiveConnections::new()),
            lookup: lookup::HostLookup::shared(),
            inbound_limits,
        }
    }

    /// Turns on TCP keepalive (`KEEPALIVE_*`) on an accepted connection, so an idle one
    /// whose client vanished, or whose NAT mapping expired, is noticed and ends.
    pub(crate) fn keep_alive(&self, stream: &tokio::net::TcpStream) {
        if let Some(keepalive) = &self.config.keepalive {
            if let Err(error) = crate::socket::set_keepalive(stream, keepalive) {
                tracing::debug!(%error, "cannot set TCP keepalive on an accepted connection");
            }
        }
    }

    /// The local workload holding `ip`, if this tunnel serves it.
    pub fn local_workload(&self, ip: IpAddr) -> Result<Arc<Workload>, LocalMiss> {
        self.local_workload_in(&self.state.read(), ip)
    }

    /// [`local_workload`](Self::local_workload) on a snapshot the caller already holds, so
    /// one connection's checks all see the same state.
    pub(crate) fn local_workload_in(
        &self,
        store: &Store,
        ip: IpAddr,
    ) -> Result<Arc<Workload>, LocalMiss> {
        self.scope.local_workload(store, &self.config.network, ip)
    }

    /// [`local_workload`](Self::local_workload), waiting up to [`LOCAL_WORKLOAD_WAIT`] for it
    /// to arrive when it is unknown (a just-enrolled pod connecting before its workload's xDS
    /// push). An ambiguous address is answered at once: waiting would not resolve it.
    pub async fn wait_for_local_workload(&self, ip: IpAddr) -> Result<Arc<Workload>, LocalMiss> {
        // Subscribe before looking, so a write between the look and the wait is not missed.
        let mut changes = self.state.changes();
        match self.local_workload(ip) {
            Err(LocalMiss::Unknown) => {}
            found => return found,
        }
        let deadline = tokio::time::sleep(LOCAL_WORKLOAD_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::debug!(%ip, wait = ?LOCAL_WORKLOAD_WAIT, "no local workload arrived");
                    return Err(LocalMiss::Unknown);
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(LocalMiss::Unknown);
                    }
                    match self.local_workload(ip) {
                        Err(LocalMiss::Unknown) => continue,
                        found => return found,
                    }
                }
            }
        }
    }

    /// The authorize step of both inbound paths: a connection from `source_ip` (with the
    /// identity its TLS handshake proved, `None` for plaintext) to a checked `target`.
    /// `Err(Denied)` when it must not reach the workload; otherwise the connection's place
    /// among the live connections, which says when a later state change revokes it.
    ///
    /// `store` must be the snapshot the target was checked on, held (its read lock) until
    /// this returns: registering under the snapshot the decision was made on is what makes
    /// sure no policy change slips between the decision and the re-checks (`live.rs`).
    pub(crate) fn authorize(
        &self,
        store: &Store,
        source_identity: Option<Identity>,
        source_ip: IpAddr,
        target: &InboundTarget,
    ) -> Result<Registration, ProxyError> {
        let connection = ConnectionInfo {
            source_identity,
            source_ip,
            destination: target.workload.clone(),
            destination_addr: target.addr,
        };
        admit(authz::authorize(&connection, store))?;
        Ok(if self.config.recheck_live_connections {
            self.live.register(connection)
        } else {
            Registration::untracked()
        })
    }

    /// The source inbound delivery to the app uses, for a client at `client`.
    pub fn delivery_source(&self, client: IpAddr) -> crate::socket::Source {
        match self.delivery {
            Delivery::KernelSource => crate::socket::Source::Any,
            Delivery::PreserveClient => crate::socket::Source::Transparent(client),
        }
    }

    /// True for a port of the tunnel itself (its listeners, admin, metrics and readiness; see
    /// `ListenConfig::is_tunnel_port`): inbound never delivers there, whatever the address.
    pub fn is_own_port(&self, addr: SocketAddr) -> bool {
        self.config.listen.is_tunnel_port(addr.port())
    }
}

/// A decision as the data path acts on it: go on (with the reason), or fail with the denial.
pub(crate) fn admit(decision: Decision) -> Result<AllowReason, ProxyError> {
    match decision {
        Decision::Allow(reason) => Ok(reason),
        Decision::Deny(reason) => Err(ProxyError::Denied(reason)),
    }
}

/// A local workload address an inbound connection is to be delivered to, once checked.
#[derive(Clone, Debug)]
pub(crate) struct InboundTarget {
    pub addr: SocketAddr,
    pub workload: Arc<Workload>,
}
