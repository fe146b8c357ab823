//! One access-log line and one set of metric updates per proxied connection.
//!
//! Each path builds a [`Description`] once, from its decision (outbound's route, inbound's
//! checked target), and starts the record with it; afterwards the record only learns whether
//! the upstream was reached and how the connection ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::copy::Transferred;
use super::ProxyError;
use crate::identity::Identity;
use crate::metrics::{ConnectionLabels, DenialLabels, Metrics};

/// What the log line and the metric labels say about a connection, besides its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    pub src: SocketAddr,
    /// The address the client asked for: the captured original destination (a service VIP,
    /// say) or the HBONE CONNECT target. `None` when it could not be read.
    pub original_dst: Option<SocketAddr>,
    /// Where the tunnel sends the bytes (the chosen endpoint); `None` when it failed before
    /// choosing one.
    pub dst: Option<SocketAddr>,
    pub src_identity: Option<Identity>,
    pub dst_identity: Option<Identity>,
    /// `HBONE` or `TCP`: how the connection travels between tunnels.
    pub protocol: &'static str,
    pub labels: ConnectionLabels,
}

impl Description {
    /// A connection known only by its addresses, before any route or target was decided.
    pub fn unrouted(
        direction: &'static str,
        src: SocketAddr,
        original_dst: Option<SocketAddr>,
    ) -> Description {
        Description {
            direction,
            src,
            original_dst,
            dst: None,
            src_identity: None,
            dst_identity: None,
            protocol: "TCP",
            labels: base_labels(direction),
        }
    }
}

/// The labels every connection of `direction` starts from.
pub fn base_labels(direction: &'static str) -> ConnectionLabels {
    ConnectionLabels {
        reporter: if direction == "outbound" {
            "source"
        } else {
            "destination"
        },
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: "unknown",
        ..Default::default()
    }
}

/// A connection in progress: its description, when it started, whether the upstream was
/// reached. Logs exactly once, at `finish` or, for a connection cut at a drain deadline, on drop.
pub struct ConnectionRecord {
    description: Description,
    started: Instant,
    opened: bool,
    /// Set by `finish`; a record dropped without it belongs to a connection that was cut
    /// (its task dropped at a drain deadline), which still gets its log line.
    finished: bool,
    metrics: Arc<Metrics>,
}

/// `flag` / `response_flags` of a connection cut at a drain deadline.
pub const DRAIN_CUT_FLAG: &str = "drain_cut";

/// `-` for what is not known, as in the rest of the line.
fn or_dash<T: ToString>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "-".into())
}

impl ConnectionRecord {
    pub fn start(metrics: Arc<Metrics>, description: Description) -> ConnectionRecord {
        metrics.active_connections.inc();
        ConnectionRecord {
            description,
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
            .get_or_create(&self.description.labels)
            .inc();
    }

    /// Writes the access-log line and closes the connection in the metrics.
    pub fn finish(mut self, transferred: Transferred, error: Option<&ProxyError>) {
        self.finished = true;
        let d = &self.description;
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let original_dst = or_dash(&d.original_dst);
        let dst = or_dash(&d.dst);
        let src_identity = or_dash(&d.src_identity);
        let dst_identity = or_dash(&d.dst_identity);
        match error {
            None => tracing::info!(
                target: "access",
                direction = d.direction,
                src = %d.src,
                original_dst = %original_dst,
                dst = %dst,
                src_identity = src_identity.as_str(),
                dst_identity = dst_identity.as_str(),
                protocol = d.protocol,
                bytes_sent = transferred.a_to_b,
                bytes_recv = transferred.b_to_a,
                duration_ms,
                "connection complete"
            ),
            Some(e) => tracing::warn!(
                target: "access",
                direction = d.direction,
                src = %d.src,
                original_dst = %original_dst,
                dst = %dst,
                src_identity = src_identity.as_str(),
                dst_identity = dst_identity.as_str(),
                protocol = d.protocol,
                bytes_sent = transferred.a_to_b,
                bytes_recv = transferred.b_to_a,
                duration_ms,
                flag = e.flag(),
                // A string, so the line quotes it: the reason has spaces and is read back whole.
                reason = e.denial().map(|r| r.to_string()),
                error = %e,
                "connection failed"
            ),
        }
        if let Some(reason) = error.and_then(ProxyError::refusal) {
            let labels = &self.description.labels;
            self.metrics
                .policy_denials
                .get_or_create(&DenialLabels {
                    policy: reason.policy().to_string(),
                    reason: reason.kind(),
                    destination_workload: labels.destination_workload.clone(),
                    destination_workload_namespace: labels.destination_workload_namespace.clone(),
                    protocol: d.protocol,
                })
                .inc();
        }
        if self.opened {
            let mut labels = std::mem::take(&mut self.description.labels);
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
        let d = &self.description;
        tracing::warn!(
            target: "access",
            direction = d.direction,
            src = %d.src,
            original_dst = %or_dash(&d.original_dst),
            dst = %or_dash(&d.dst),
            src_identity = or_dash(&d.src_identity).as_str(),
            dst_identity = or_dash(&d.dst_identity).as_str(),
            protocol = d.protocol,
            duration_ms = self.started.elapsed().as_millis() as u64,
            flag = DRAIN_CUT_FLAG,
            "connection cut at the drain deadline"
        );
        if self.opened {
            let mut labels = std::mem::take(&mut self.description.labels);
            labels.response_flags = DRAIN_CUT_FLAG;
            self.metrics.connections_closed.get_or_create(&labels).inc();
        }
    }
}
