//! `GET /debug/authorize` on the admin port: how the authorize step decides a connection an
//! operator describes, as JSON ([`crate::authz::Explanation`]), so "why was this denied" is
//! answered from the tunnel's own state without reading code.
//!
//! Query parameters (all URL-encoded):
//! - `source_identity`: `spiffe://<td>/ns/<ns>/sa/<sa>`; absent or empty for a plaintext
//!   client (no verified identity);
//! - `source_ip`: the client's address;
//! - `destination`: the destination workload, by IP (looked up on this tunnel's network) or
//!   by uid;
//! - `port`: the destination port.
//!
//! The answer's `reason` is the string the access log prints for the same denial.

use std::net::{IpAddr, SocketAddr};

use crate::authz::{self, ConnectionInfo, Explanation};
use crate::identity::Identity;
use crate::state::Store;

/// What is wrong with a request, answered as 400 (or 404 for an unknown workload).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "missing query parameter `{0}` (expected source_identity, source_ip, destination, port)"
    )]
    Missing(&'static str),
    #[error("`{name}`: {value:?} {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "unknown query parameter `{0}` (expected source_identity, source_ip, destination, port)"
    )]
    Unknown(String),
    #[error("no workload has {0}")]
    NoWorkload(String),
}

/// Parses `query` (the part after `?`) and explains the connection it describes on `store`.
pub fn explain_query(
    query: &str,
    store: &Store,
    network: &str,
) -> Result<Explanation, ExplainError> {
    let mut source_identity = None;
    let mut source_ip = None;
    let mut destination = None;
    let mut port = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "source_identity" => &mut source_identity,
            "source_ip" => &mut source_ip,
            "destination" => &mut destination,
            "port" => &mut port,
            other => return Err(ExplainError::Unknown(other.to_string())),
        };
        *slot = Some(value.into_owned());
    }
    let source_identity = match source_identity.filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<Identity>()
                .map_err(|e| ExplainError::Invalid {
                    name: "source_identity",
                    value: text.clone(),
                    why: format!("is not a SPIFFE identity: {e}"),
                })?,
        ),
    };
    let source_ip = parse_ip(
        "source_ip",
        source_ip.ok_or(ExplainError::Missing("source_ip"))?,
    )?;
    let port_text = port.ok_or(ExplainError::Missing("port"))?;
    let port = port_text
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ExplainError::Invalid {
            name: "port",
            value: port_text.clone(),
            why: "is not a port (1-65535)".into(),
        })?;
    let destination = destination.ok_or(ExplainError::Missing("destination"))?;
    let (workload, ip) = match destination.parse::<IpAddr>() {
        Ok(ip) => {
            let w = store
                .workload_by_ip(network, ip)
                .ok_or_else(|| ExplainError::NoWorkload(format!("address {ip}")))?;
            (w, ip)
        }
        Err(_) => {
            let w = store
                .workload_by_uid(&destination)
                .ok_or_else(|| ExplainError::NoWorkload(format!("uid {destination:?}")))?;
            let ip = *w
                .workload_ips
                .first()
                .ok_or_else(|| ExplainError::Invalid {
                    name: "destination",
                    value: destination.clone(),
                    why: "names a workload without addresses; give one of its IPs".into(),
                })?;
            (w, ip)
        }
    };
    let connection = ConnectionInfo {
        source_identity,
        source_ip,
        destination: workload,
        destination_addr: SocketAddr::new(ip, port),
    };
    Ok(authz::explain(&connection, store))
}

fn parse_ip(name: &'static str, text: String) -> Result<IpAddr, ExplainError> {
    text.parse().map_err(|_| ExplainError::Invalid {
        name,
        value: text.clone(),
        why: "is not an IP address".into(),
    })
}

#[cfg(test)]
mod tests;
