//! `nodetunnel_connections_total`: every proxied connection once, when it ends, by how it
//! ended. Few labels on purpose (direction, protocol, outcome, the access log's flag): the
//! series to alert on ("denials or failures on this node went up"), where `istio_tcp_*`
//! carries the per-workload detail.

use prometheus_client::encoding::EncodeLabelSet;

/// How a connection ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnectionOutcome {
    /// Admitted, reached the upstream and ended without an error.
    Completed,
    /// Refused by authorization policy, up front or when a policy change revoked it.
    Denied,
    /// Any other error, before or after the upstream was reached (cut at a drain deadline too).
    Failed,
}

impl ConnectionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionOutcome::Completed => "completed",
            ConnectionOutcome::Denied => "denied",
            ConnectionOutcome::Failed => "failed",
        }
    }
}

/// Labels of `nodetunnel_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `HBONE` (15008, or outbound through a tunnel) or `TCP` (15006, or outbound plaintext).
    pub protocol: &'static str,
    pub outcome: &'static str,
    /// The access log's `flag` (`ProxyError::flag`), `-` when completed.
    pub flag: &'static str,
}

impl OutcomeLabels {
    pub fn new(
        direction: &'static str,
        protocol: &'static str,
        outcome: ConnectionOutcome,
        flag: &'static str,
    ) -> OutcomeLabels {
        OutcomeLabels {
            direction,
            protocol,
            outcome: outcome.as_str(),
            flag,
        }
    }
}
