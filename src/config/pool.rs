//! `POOL_*`: limits of the outbound HBONE connection pool.

use std::time::Duration;

use super::env::{invalid, Env};
use super::ConfigError;

/// HBONE connection pool limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolConfig {
    /// `POOL_MAX_STREAMS_PER_CONNECTION`: CONNECT streams one mTLS connection carries before
    /// the pool opens another.
    pub max_streams_per_connection: usize,
    /// `POOL_UNUSED_RELEASE_TIMEOUT`: a connection with no streams for this long is closed.
    pub idle_timeout: Duration,
}

impl PoolConfig {
    pub(super) fn from_env(env: &Env<'_>) -> Result<PoolConfig, ConfigError> {
        let max_streams = env.number("POOL_MAX_STREAMS_PER_CONNECTION", 100)?;
        let max_streams_per_connection = usize::try_from(max_streams)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid(
                    "POOL_MAX_STREAMS_PER_CONNECTION",
                    &max_streams.to_string(),
                    "must be at least 1",
                )
            })?;
        Ok(PoolConfig {
            max_streams_per_connection,
            idle_timeout: env.duration("POOL_UNUSED_RELEASE_TIMEOUT", Duration::from_secs(300))?,
        })
    }
}
