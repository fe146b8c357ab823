//! The ports and addresses the tunnel listens on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::env::Env;
use super::ConfigError;

/// Ports inside the tunnel's (or the pod's) network namespace, fixed by the ambient contract.
pub(crate) const OUTBOUND_PORT: u16 = 15001;
pub(crate) const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub(crate) const HBONE_PORT: u16 = 15008;
pub(crate) const ADMIN_PORT: u16 = 15000;
pub(crate) const METRICS_PORT: u16 = 15020;
pub(crate) const READINESS_PORT: u16 = 15021;

/// Where the data-path listeners and the admin endpoints bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenConfig {
    /// Address the outbound/inbound listeners bind: `[::]` (dual stack) unless `IPV6_ENABLED=false`.
    pub bind_ip: IpAddr,
    /// `ADMIN_ADDR`: `/config_dump`, loopback only by default.
    pub admin_addr: SocketAddr,
    /// `STATS_ADDR`: Prometheus `/metrics`.
    pub metrics_addr: SocketAddr,
    /// `READINESS_ADDR`: `/healthz/ready`.
    pub readiness_addr: SocketAddr,
}

impl ListenConfig {
    pub(super) fn from_env(env: &Env<'_>) -> Result<ListenConfig, ConfigError> {
        let bind_ip: IpAddr = if env.bool("IPV6_ENABLED", true)? {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            [0, 0, 0, 0].into()
        };
        Ok(ListenConfig {
            bind_ip,
            admin_addr: env.socket_addr("ADMIN_ADDR", ([127, 0, 0, 1], ADMIN_PORT).into())?,
            metrics_addr: env.socket_addr("STATS_ADDR", (bind_ip, METRICS_PORT).into())?,
            readiness_addr: env.socket_addr("READINESS_ADDR", (bind_ip, READINESS_PORT).into())?,
        })
    }

    /// True for a port of the tunnel itself, which no connection may be delivered to: the
    /// data-path ports (fixed), the admin, metrics and readiness ports this tunnel listens on
    /// (`ADMIN_ADDR`, `STATS_ADDR`, `READINESS_ADDR`), and their default ports even when those
    /// endpoints moved. Delivering to one would let a peer reach the tunnel from inside the
    /// mesh (a second layer of HBONE, or the admin/metrics endpoints through a workload's
    /// address). The defaults stay refused because Istio reserves them for its own proxies, so
    /// no workload legitimately serves on them, and a check that follows the configuration
    /// alone would start delivering to 15020 the day `STATS_ADDR` moves.
    pub(crate) fn is_tunnel_port(&self, port: u16) -> bool {
        matches!(
            port,
            OUTBOUND_PORT
                | INBOUND_PLAINTEXT_PORT
                | HBONE_PORT
                | ADMIN_PORT
                | METRICS_PORT
                | READINESS_PORT
        ) || [self.admin_addr, self.metrics_addr, self.readiness_addr]
            .iter()
            .any(|addr| addr.port() == port)
    }
}
