//! One workload scope's listener set: outbound capture (15001), inbound plaintext (15006),
//! inbound HBONE (15008) and, when enabled, the DNS proxy (15053 UDP + TCP), bound in one
//! network namespace and served by one [`ProxyInputs`].
//!
//! Dedicated mode runs one set in the tunnel's own namespace; shared mode runs one per pod,
//! inside the pod's namespace. Both start, stop and drain it the same way.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{inbound, inbound_plain, live, outbound, ProxyInputs};
use crate::config::{DNS_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::dns::{self, DnsServer};
use crate::drain::DrainOutcome;
use crate::socket::SocketFactory;

/// Which of the three listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// 15001: the workload's outbound connections, redirected by the capture rules.
    Outbound,
    /// 15006: plaintext connections to the workload from outside the mesh.
    InboundPlaintext,
    /// 15008: HBONE (mTLS + HTTP/2 CONNECT) from other tunnels.
    InboundHbone,
    /// 15053/udp: the DNS proxy (`ISTIO_META_DNS_PROXY_ADDR` may move it).
    DnsUdp,
    /// 15053/tcp: the DNS proxy.
    DnsTcp,
}

impl Listener {
    pub fn port(self) -> u16 {
        match self {
            Listener::Outbound => OUTBOUND_PORT,
            Listener::InboundPlaintext => INBOUND_PLAINTEXT_PORT,
            Listener::InboundHbone => HBONE_PORT,
            Listener::DnsUdp | Listener::DnsTcp => DNS_PORT,
        }
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Listener::Outbound => "outbound capture",
            Listener::InboundPlaintext => "inbound plaintext",
            Listener::InboundHbone => "inbound HBONE",
            Listener::DnsUdp => "DNS proxy (UDP)",
            Listener::DnsTcp => "DNS proxy (TCP)",
        })
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({listener}): {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub listener: Listener,
    #[source]
    pub source: std::io::Error,
}

/// The three listeners of one scope, accepting. Dropping the set aborts its accept loops
/// (the ports close once the runtime drops them); live connections are left to end on their
/// own unless [`drain`](Self::drain) is awaited.
pub struct ListenerSet {
    inputs: Arc<ProxyInputs>,
    accepting: Vec<JoinHandle<()>>,
    /// Re-checks the set's live inbound connections after each state change, for as long as
    /// the set exists, draining included (`None` when switched off).
    recheck: Option<JoinHandle<()>>,
    /// The DNS proxy (`ISTIO_META_DNS_CAPTURE`), closed with the other listeners.
    dns: Option<DnsServer>,
}

impl ListenerSet {
    /// Binds the three listeners on the configured address (`IPV6_ENABLED`) inside `sockets`'
    /// namespace, then serves them with `inputs`. All three are bound before any is served, so
    /// a failure leaves nothing listening.
    pub async fn start(
        inputs: Arc<ProxyInputs>,
        sockets: &SocketFactory,
    ) -> Result<ListenerSet, ListenError> {
        let bind_ip = inputs.config.listen.bind_ip;
        let bind = |listener: Listener| async move {
            let addr = SocketAddr::new(bind_ip, listener.port());
            sockets
                .listen_async(addr)
                .await
                .map_err(|source| ListenError {
                    addr,
                    listener,
                    source,
                })
        };
        let outbound_listener: TcpListener = bind(Listener::Outbound).await?;
        let plaintext_listener = bind(Listener::InboundPlaintext).await?;
        let hbone_listener = bind(Listener::InboundHbone).await?;
        let dns = match inputs.config.dns.enabled {
            true => Some(
                DnsServer::start(dns_handler(&inputs), sockets, inputs.config.dns.addr)
                    .await
                    .map_err(|e| match e {
                        dns::DnsBindError::Udp { addr, source } => ListenError {
                            addr,
                            listener: Listener::DnsUdp,
                            source,
                        },
                        dns::DnsBindError::Tcp { addr, source } => ListenError {
                            addr,
                            listener: Listener::DnsTcp,
                            source,
                        },
                    })?,
            ),
            false => None,
        };
        // Subscribed before any connection can register, so no write after a registration
        // goes unseen.
        let recheck = inputs.config.recheck_live_connections.then(|| {
            tokio::spawn(live::recheck_on_change(
                inputs.state.clone(),
                inputs.state.changes(),
                inputs.live.clone(),
            ))
        });
        let accepting = vec![
            tokio::spawn(outbound::run(inputs.clone(), outbound_listener)),
            tokio::spawn(inbound_plain::run(inputs.clone(), plaintext_listener)),
            tokio::spawn(inbound::run(inputs.clone(), hbone_listener)),
        ];
        Ok(ListenerSet {
            inputs,
            accepting,
            recheck,
            dns,
        })
    }

    /// What the set's connections are served with (its scope, pool, connection tasks).
    pub fn inputs(&self) -> &Arc<ProxyInputs> {
        &self.inputs
    }

    /// Stops accepting: returns once the listeners are closed, so a connection attempted
    /// afterwards is refused. Live connections are untouched until [`drain`](Self::drain).
    pub async fn stop_listening(&mut self) {
        for task in &self.accepting {
            task.abort();
        }
        // An aborted task drops its listener when it is next polled; wait for that.
        for task in self.accepting.drain(..) {
            let _ = task.await;
        }
        if let Some(dns) = &mut self.dns {
            dns.stop().await;
        }
    }

    /// Stops listening, then gives live connections up to `deadline` before cutting them.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        self.stop_listening().await;
        self.inputs.tasks.drain(deadline).await
    }
}

/// The DNS proxy's view of this scope: its state, namespace and sockets (forwarded queries
/// leave from the scope's namespace, marked, like its other upstream sockets).
fn dns_handler(inputs: &ProxyInputs) -> Arc<dns::Handler> {
    Arc::new(dns::Handler {
        state: inputs.state.clone(),
        namespace: inputs.scope.workload.as_ref().map(|w| w.namespace.clone()),
        network: inputs.config.network.clone(),
        cluster_domain: inputs.config.cluster_domain.clone(),
        upstream: dns::Upstream::shared(),
        sockets: inputs.sockets.clone(),
        metrics: inputs.metrics.clone(),
    })
}

impl Drop for ListenerSet {
    fn drop(&mut self) {
        for task in self.accepting.iter().chain(&self.recheck) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
