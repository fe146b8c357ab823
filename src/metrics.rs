//! Prometheus metrics with Istio's names and labels, so existing dashboards keep working.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Workload;

/// Labels of `istio_tcp_*` (a subset of Istio's standard set, same names and values).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `source` on the client-side tunnel, `destination` on the server side.
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service: String,
    pub destination_principal: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    /// `mutual_tls` when HBONE carried the connection, else `unknown`.
    pub connection_security_policy: &'static str,
}

impl ConnectionLabels {
    pub fn with_source(mut self, w: Option<&Workload>) -> Self {
        if let Some(w) = w {
            self.source_workload = workload_name(w);
            self.source_workload_namespace = w.namespace.clone();
            self.source_principal = w.identity().to_string();
        }
        self
    }

    pub fn with_destination(mut self, w: Option<&Workload>) -> Self {
        if let Some(w) = w {
            self.destination_workload = workload_name(w);
            self.destination_workload_namespace = w.namespace.clone();
            self.destination_principal = w.identity().to_string();
        }
        self
    }
}

/// Istio reports the owning workload (e.g. the Deployment) when known, else the pod name.
fn workload_name(w: &Workload) -> String {
    if w.workload_name.is_empty() {
        w.name.clone()
    } else {
        w.workload_name.clone()
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub connections_opened: Family<ConnectionLabels, Counter>,
    pub connections_closed: Family<ConnectionLabels, Counter>,
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    pub received_bytes: Family<ConnectionLabels, Counter>,
    /// HBONE connections this tunnel opened to peers (outbound pool).
    pub hbone_connections_opened: Counter,
    /// HBONE connections peers opened to this tunnel.
    pub hbone_connections_accepted: Counter,
    pub active_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            hbone_connections_opened: Counter::default(),
            hbone_connections_accepted: Counter::default(),
            active_connections: Gauge::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.connections_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.connections_closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent by the client during a TCP connection",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received by the client during a TCP connection",
            m.received_bytes.clone(),
        );
        let own = registry.sub_registry_with_prefix("nodetunnel");
        own.register(
            "hbone_connections_opened",
            "HBONE (mTLS HTTP/2) connections opened to peers",
            m.hbone_connections_opened.clone(),
        );
        own.register(
            "hbone_connections_accepted",
            "HBONE connections accepted from peers",
            m.hbone_connections_accepted.clone(),
        );
        own.register(
            "active_connections",
            "Proxied connections currently open",
            m.active_connections.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_istio_metric_names_and_labels() {
        let m = Metrics::new();
        let labels = ConnectionLabels {
            reporter: "source",
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: "mutual_tls",
            destination_service: "web.default.svc.cluster.local".into(),
            ..Default::default()
        };
        m.connections_opened.get_or_create(&labels).inc();
        m.sent_bytes.get_or_create(&labels).inc_by(42);
        let text = m.encode();
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{text}"
        );
        assert!(text.contains("reporter=\"source\""), "{text}");
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\""),
            "{text}"
        );
        assert!(text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(text.contains("} 42"), "{text}");
        assert!(
            text.contains("nodetunnel_hbone_connections_opened_total 0"),
            "{text}"
        );
    }
}
