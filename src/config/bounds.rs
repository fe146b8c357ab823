//! Resource bounds on HBONE connections: how long a peer may take to finish its handshakes, how
//! many connections 15008 holds at once, when an idle one is closed, and the keepalives (TCP
//! and HTTP/2 PING) that notice a peer or a NAT mapping that silently went away.
//!
//! The keepalive variables and defaults are ztunnel's (`KEEPALIVE_*`; PINGs every 10 s, 20 s to
//! answer); ztunnel has no handshake deadline, connection caps or server idle timeout, so those
//! names (`HBONE_*`) and defaults are ours.

use std::time::Duration;

use super::env::{invalid, Env};
use super::ConfigError;

/// Limits of the inbound HBONE listener (15008) and the HTTP/2 keepalive of both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HboneBounds {
    /// `HBONE_HANDSHAKE_TIMEOUT`: from accept to an established HTTP/2 connection (TLS
    /// handshake, then the client's preface). A peer still handshaking is closed.
    pub handshake_timeout: Duration,
    /// `HBONE_MAX_CONNECTIONS`: inbound HBONE connections the process holds at once, across
    /// every pod (they share its descriptors); more are closed at accept.
    pub max_connections: usize,
    /// `HBONE_MAX_CONNECTIONS_PER_IP`: of those, from one source address.
    pub max_connections_per_ip: usize,
    /// `HBONE_IDLE_TIMEOUT`: an inbound connection with no stream for this long is closed
    /// (GOAWAY). Longer than the pool's `POOL_UNUSED_RELEASE_TIMEOUT`, so peers normally let go
    /// first.
    pub idle_timeout: Duration,
    /// HTTP/2 PINGs on every HBONE connection, inbound and pooled outbound.
    pub ping: PingConfig,
}

/// HTTP/2 keepalive: a PING every `interval`; no answer within `timeout` closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingConfig {
    /// `HBONE_PING_INTERVAL` (ztunnel: 10 s, fixed).
    pub interval: Duration,
    /// `HBONE_PING_TIMEOUT` (ztunnel: 20 s, fixed).
    pub timeout: Duration,
}

impl Default for PingConfig {
    fn default() -> PingConfig {
        PingConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(20),
        }
    }
}

/// TCP keepalive on the tunnel's data-path sockets (`KEEPALIVE_*`, ztunnel's names and
/// defaults: first probe after 180 s idle, then every 180 s, 9 unanswered probes end it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// `KEEPALIVE_TIME`
    pub time: Duration,
    /// `KEEPALIVE_INTERVAL`
    pub interval: Duration,
    /// `KEEPALIVE_RETRIES`
    pub retries: u32,
}

impl Default for TcpKeepalive {
    fn default() -> TcpKeepalive {
        TcpKeepalive {
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
        }
    }
}

impl HboneBounds {
    pub(super) fn from_env(env: &Env<'_>) -> Result<HboneBounds, ConfigError> {
        let defaults = PingConfig::default();
        Ok(HboneBounds {
            handshake_timeout: positive(env, "HBONE_HANDSHAKE_TIMEOUT", Duration::from_secs(10))?,
            max_connections: count(env, "HBONE_MAX_CONNECTIONS", 16384)?,
            max_connections_per_ip: count(env, "HBONE_MAX_CONNECTIONS_PER_IP", 1024)?,
            idle_timeout: positive(env, "HBONE_IDLE_TIMEOUT", Duration::from_secs(600))?,
            ping: PingConfig {
                interval: positive(env, "HBONE_PING_INTERVAL", defaults.interval)?,
                timeout: positive(env, "HBONE_PING_TIMEOUT", defaults.timeout)?,
            },
        })
    }
}

impl TcpKeepalive {
    /// `None` when `KEEPALIVE_ENABLED=false`.
    pub(super) fn from_env(env: &Env<'_>) -> Result<Option<TcpKeepalive>, ConfigError> {
        if !env.bool("KEEPALIVE_ENABLED", true)? {
            return Ok(None);
        }
        let defaults = TcpKeepalive::default();
        let retries = env.number("KEEPALIVE_RETRIES", defaults.retries.into())?;
        Ok(Some(TcpKeepalive {
            time: positive(env, "KEEPALIVE_TIME", defaults.time)?,
            interval: positive(env, "KEEPALIVE_INTERVAL", defaults.interval)?,
            retries: u32::try_from(retries)
                .ok()
                .filter(|r| *r >= 1)
                .ok_or_else(|| {
                    invalid(
                        "KEEPALIVE_RETRIES",
                        &retries.to_string(),
                        "must be between 1 and 4294967295",
                    )
                })?,
        }))
    }
}

/// A duration that must not be zero (a zero deadline or interval would close every connection
/// at once, or spin).
fn positive(env: &Env<'_>, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration(var, default)?;
    if value.is_zero() {
        return Err(invalid(
            var,
            env.get(var).unwrap_or("0"),
            "must be more than zero",
        ));
    }
    Ok(value)
}

/// A connection count of at least 1.
fn count(env: &Env<'_>, var: &'static str, default: u64) -> Result<usize, ConfigError> {
    let value = env.number(var, default)?;
    usize::try_from(value)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(var, &value.to_string(), "must be at least 1"))
}
