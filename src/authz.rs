//! The authorize step: whether one inbound connection may reach its destination workload, and
//! why.
//!
//! Both inbound paths (HBONE and plaintext) describe the connection the same way, as a
//! [`ConnectionInfo`], once its target workload is known and before anything is dialed, and
//! act on the [`Decision`]: a denied HBONE stream is refused (401) while its HTTP/2 connection
//! stays up; a denied plaintext connection is closed. The reason is logged either way.
//!
//! Nothing is enforced yet: every connection is allowed. The policy issue fills [`authorize`]
//! with Istio's AuthorizationPolicy semantics over the policies the store already holds, which
//! is why it takes the store.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::Identity;
use crate::state::{Store, Workload};

/// One inbound connection, as the authorize step sees it.
#[derive(Clone, Debug)]
#[expect(
    dead_code,
    reason = "the policy issue's `authorize` reads these; the stub allows everything"
)]
pub struct ConnectionInfo {
    /// The identity the peer proved with its TLS certificate (HBONE); `None` for plaintext,
    /// where nothing about the source is proven.
    pub source_identity: Option<Identity>,
    /// The source address of the connection (for HBONE, the peer tunnel's address).
    pub source_ip: IpAddr,
    /// The local workload the connection is for.
    pub destination: Arc<Workload>,
    /// The address and port on that workload the connection asked for.
    pub destination_addr: SocketAddr,
}

/// Whether the connection may proceed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(AllowReason),
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the policy issue's `authorize` denies; the stub never does"
        )
    )]
    Deny(DenyReason),
}

/// Why a connection was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowReason {
    /// Policies are not enforced yet; every connection is allowed.
    NoEnforcement,
}

/// Why a connection was denied: which policy decided it, or why none allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the policy issue's `authorize` denies; the stub never does"
    )
)]
pub enum DenyReason {
    /// A DENY policy (`namespace/name`) matched the connection.
    DenyPolicy { policy: String },
    /// ALLOW policies select the destination workload and none of them matched.
    NoAllowPolicyMatched { destination: String },
}

impl fmt::Display for AllowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowReason::NoEnforcement => f.write_str("no policy enforcement yet"),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::DenyPolicy { policy } => write!(f, "DENY policy {policy} matched"),
            DenyReason::NoAllowPolicyMatched { destination } => {
                write!(f, "no ALLOW policy for {destination} matched")
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(reason) => write!(f, "allowed: {reason}"),
            Decision::Deny(reason) => write!(f, "denied: {reason}"),
        }
    }
}

/// Decides `connection` against the authorization policies in `store`.
///
/// Allows everything for now (see the module doc).
pub fn authorize(_connection: &ConnectionInfo, _store: &Store) -> Decision {
    Decision::Allow(AllowReason::NoEnforcement)
}

#[cfg(test)]
mod tests;
