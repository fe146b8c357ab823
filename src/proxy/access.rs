//! One access-log line and one set of metric updates per proxied connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::copy::Transferred;
use super::ProxyError;
use crate::metrics::{ConnectionLabels, Metrics};

/// What the log line says about a connection; filled in as the connection is set up.
pub struct ConnectionRecord {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: Option<SocketAddr>,
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub protocol: &'static str,
    pub labels: ConnectionLabels,
    started: Instant,
    opened: bool,
    /// Set by `finish`; a record dropped without it belongs to a connection that was cut
    /// (its task dropped at a drain deadline), which still gets its log line.
    finished: bool,
    metrics: Arc<Metrics>,
}

/// `flag` / `response_flags` of a connection cut at a drain deadline.
pub const DRAIN_CUT_FLAG: &str = "drain_cut";

impl ConnectionRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        direction: &'static str,
        src: SocketAddr,
    ) -> ConnectionRecord {
        metrics.active_connections.inc();
        ConnectionRecord {
            direction,
            src,
            dst: None,
            src_identity: None,
            dst_identity: None,
            protocol: "TCP",
            labels: ConnectionLabels {
                reporter: if direction == "outbound" {
                    "source"
                } else {
                    "destination"
                },
                request_protocol: "tcp",
                response_flags: "-",
                connection_security_policy: "unknown",
                ..Default::default()
            },
            started: Instant::now(),
            opened: false,
            finished: false,
            metrics,
        }
    }

    /// The upstream is connected: count the connection as opened.
    pub fn opened(&mut self) {
        self.opened = true;
        self.metrics
            .connections_opened
            .get_or_create(&self.labels)
            .inc();
    }

    /// Writes the access-log line and closes the connection in the metrics.
    pub fn finish(mut self, transferred: Transferred, error: Option<&ProxyError>) {
        self.finished = true;
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let dst = self
            .dst
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let src_identity = self.src_identity.as_deref().unwrap_or("-");
        let dst_identity = self.dst_identity.as_deref().unwrap_or("-");
        match error {
            None => tracing::info!(
                target: "access",
                direction = self.direction,
                src = %self.src,
                dst = %dst,
                src_identity,
                dst_identity,
                protocol = self.protocol,
                bytes_sent = transferred.a_to_b,
                bytes_recv = transferred.b_to_a,
                duration_ms,
                "connection complete"
            ),
            Some(e) => tracing::warn!(
                target: "access",
                direction = self.direction,
                src = %self.src,
                dst = %dst,
                src_identity,
                dst_identity,
                protocol = self.protocol,
                bytes_sent = transferred.a_to_b,
                bytes_recv = transferred.b_to_a,
                duration_ms,
                flag = e.flag(),
                error = %e,
                "connection failed"
            ),
        }
        if self.opened {
            let mut labels = std::mem::take(&mut self.labels);
            if let Some(e) = error {
                labels.response_flags = e.flag();
            }
            let m = &self.metrics;
            m.connections_closed.get_or_create(&labels).inc();
            m.sent_bytes
                .get_or_create(&labels)
                .inc_by(transferred.a_to_b);
            m.received_bytes
                .get_or_create(&labels)
                .inc_by(transferred.b_to_a);
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.metrics.active_connections.dec();
        if self.finished {
            return;
        }
        // Cut mid-copy: the byte counts lived in the dropped copy loop and are unknown.
        let dst = self
            .dst
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        tracing::warn!(
            target: "access",
            direction = self.direction,
            src = %self.src,
            dst = %dst,
            src_identity = self.src_identity.as_deref().unwrap_or("-"),
            dst_identity = self.dst_identity.as_deref().unwrap_or("-"),
            protocol = self.protocol,
            duration_ms = self.started.elapsed().as_millis() as u64,
            flag = DRAIN_CUT_FLAG,
            "connection cut at the drain deadline"
        );
        if self.opened {
            let mut labels = std::mem::take(&mut self.labels);
            labels.response_flags = DRAIN_CUT_FLAG;
            self.metrics.connections_closed.get_or_create(&labels).inc();
        }
    }
}
