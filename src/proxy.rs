//! The data path: outbound capture (15001), inbound HBONE (15008), inbound plaintext (15006),
//! and the byte copy between two connections they all share.

mod access;
pub mod copy;
mod error;
pub mod inbound;
pub mod inbound_plain;
mod listeners;
pub mod outbound;

pub use error::ProxyError;
pub use listeners::{ListenError, Listener, ListenerSet};

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::drain::ConnectionTasks;
use crate::hbone::pool::Pool;
use crate::identity::SecretManager;
use crate::metrics::Metrics;
use crate::socket::SocketFactory;
use crate::state::{StateHandle, Workload};

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
}

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
/// dedicated tunnel, or one pod in shared mode).
pub struct ProxyInputs {
    pub config: Arc<Config>,
    pub state: StateHandle,
    pub certs: Arc<SecretManager>,
    /// Outbound HBONE connections. One per listener group: in shared mode they are sockets
    /// inside one pod's namespace and must never carry another pod's traffic.
    pub pool: Pool,
    /// Creates upstream sockets (marked, in the right namespace).
    pub sockets: SocketFactory,
    pub metrics: Arc<Metrics>,
    pub scope: Scope,
    pub delivery: Delivery,
    /// Every connection task of this group, for draining.
    pub tasks: ConnectionTasks,
}

/// Accepts connections until the task is dropped, running `handle` for each on its own task
/// in `tasks`. A failed accept (e.g. out of file descriptors) backs off briefly instead of
/// spinning.
pub(crate) async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    tasks: &ConnectionTasks,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tasks.spawn(handle(stream, crate::socket::canonical(peer)));
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

impl ProxyInputs {
    /// The local workload holding `ip`, if this tunnel serves it.
    pub fn local_workload(&self, ip: std::net::IpAddr) -> Option<Arc<Workload>> {
        self.state
            .read()
            .workload_by_ip(&self.config.network, ip)
            .filter(|w| self.scope.serves(w))
    }

    /// The source inbound delivery to the app uses, for a client at `client`.
    pub fn delivery_source(&self, client: std::net::IpAddr) -> crate::socket::Source {
        match self.delivery {
            Delivery::KernelSource => crate::socket::Source::Any,
            Delivery::PreserveClient => crate::socket::Source::Transparent(client),
        }
    }

    /// True for the tunnel's own listener ports: connections there were not redirected.
    pub fn is_own_port(addr: SocketAddr) -> bool {
        use crate::config::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
        matches!(
            addr.port(),
            OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | HBONE_PORT
        )
    }
}
