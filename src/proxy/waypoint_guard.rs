//! Inbound's waypoint rule: a workload that names a waypoint only receives traffic from that
//! waypoint, so a client cannot skip the waypoint's L7 policy by dialing the workload's
//! address directly.
//!
//! "From the waypoint" is ztunnel's test: the peer proves the identity of one of the
//! waypoint's instances and connects from that instance's address. Only the workload's own
//! `waypoint` counts: a service's waypoint governs traffic addressed to the service's VIP,
//! and a client dialing an endpoint's address directly never went through it (Istio lets
//! that through too). Plaintext never comes from a waypoint, which speaks HBONE.

use std::net::IpAddr;

use super::{InboundTarget, ProxyError};
use crate::identity::Identity;
use crate::state::Store;

/// Ok when `target`'s workload has no waypoint, or the peer (`identity`, proven by mTLS, if
/// any, connecting from `src_ip`) is an instance of it.
pub(crate) fn check_from_waypoint(
    store: &Store,
    target: &InboundTarget,
    identity: Option<&Identity>,
    src_ip: IpAddr,
) -> Result<(), ProxyError> {
    let Some(waypoint) = &target.workload.waypoint else {
        return Ok(());
    };
    if identity.is_some_and(|id| store.is_from_waypoint(waypoint, id, src_ip)) {
        return Ok(());
    }
    Err(ProxyError::WaypointBypass {
        target: target.addr,
        waypoint: waypoint.to_string(),
        peer: match identity {
            Some(id) => format!("{src_ip} ({id})"),
            None => format!("{src_ip} (plaintext)"),
        },
    })
}

#[cfg(test)]
mod tests;
