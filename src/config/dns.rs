//! The DNS proxy's settings (ztunnel's names: `ISTIO_META_DNS_CAPTURE`,
//! `ISTIO_META_DNS_PROXY_ADDR`, the chart's proxy-metadata variables).

use std::net::SocketAddr;

use super::env::Env;
use super::ConfigError;

/// The DNS proxy's port in each pod's namespace: the in-pod capture rules redirect UDP and TCP
/// port 53 here.
pub(crate) const DNS_PORT: u16 = 15053;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsConfig {
    /// `ISTIO_META_DNS_CAPTURE` (default true, as ztunnel: running the server costs two sockets
    /// per pod, and only pods whose capture rules redirect port 53 send it anything).
    pub enabled: bool,
    /// `ISTIO_META_DNS_PROXY_ADDR` (default `127.0.0.1:15053`): where the UDP and TCP sockets
    /// bind, in each pod's namespace (shared mode) or the tunnel's (dedicated). The capture
    /// rules' REDIRECT delivers a pod's port-53 traffic to its loopback address.
    pub addr: SocketAddr,
}

impl DnsConfig {
    pub(super) fn from_env(env: &Env<'_>) -> Result<DnsConfig, ConfigError> {
        Ok(DnsConfig {
            enabled: env.bool("ISTIO_META_DNS_CAPTURE", true)?,
            addr: env.socket_addr(
                "ISTIO_META_DNS_PROXY_ADDR",
                SocketAddr::from(([127, 0, 0, 1], DNS_PORT)),
            )?,
        })
    }
}
