//! `/metrics` in Prometheus text format on the chart's `metrics` port (15014), with the names
//! and meanings of Istio's agent: `istio_cni_install_ready` (gauge: the plugin binary,
//! kubeconfig and conflist entry are in place) and `ztunnel_connected` (gauge: tunnel
//! connections on the ZDS socket; this agent serves one current connection, so 0 or 1).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http_server::{self, text};

/// The agent's counters and gauges, shared with their owners.
#[derive(Debug, Default)]
pub struct Metrics {
    ztunnel_connected: AtomicU64,
}

impl Metrics {
    /// Follows a ZDS event: connected on hello, disconnected on a dropped connection.
    pub fn on_zds(&self, event: &nodetunnel_zds::agent::AgentEvent) {
        use nodetunnel_zds::agent::AgentEvent;
        match event {
            AgentEvent::Connected => self.ztunnel_connected.store(1, Ordering::Relaxed),
            AgentEvent::Disconnected { .. } => self.ztunnel_connected.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// The exposition text.
    pub fn render(&self, installed: bool) -> String {
        format!(
            "# HELP istio_cni_install_ready Whether the CNI plugin installation is ready or not\n\
             # TYPE istio_cni_install_ready gauge\n\
             istio_cni_install_ready {}\n\
             # HELP ztunnel_connected number of connections to ztunnel\n\
             # TYPE ztunnel_connected gauge\n\
             ztunnel_connected {}\n",
            u8::from(installed),
            self.ztunnel_connected.load(Ordering::Relaxed)
        )
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    installed: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(http_server::serve(listener, "metrics", move |req| {
        let response = match req.uri().path() {
            "/metrics" => text(StatusCode::OK, metrics.render(*installed.borrow())),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        async move { response }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodetunnel_zds::agent::AgentEvent;

    #[test]
    fn gauges_follow_install_and_zds() {
        let m = Metrics::default();
        assert!(m.render(false).contains("\nistio_cni_install_ready 0\n"));
        assert!(m.render(false).contains("\nztunnel_connected 0\n"));
        m.on_zds(&AgentEvent::Connected);
        let text = m.render(true);
        assert!(text.contains("\nistio_cni_install_ready 1\n"), "{text}");
        assert!(text.contains("\nztunnel_connected 1\n"), "{text}");
        m.on_zds(&AgentEvent::Disconnected { reason: "x".into() });
        assert!(m.render(true).contains("\nztunnel_connected 0\n"));
    }
}
