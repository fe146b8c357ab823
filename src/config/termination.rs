//! How long live connections may finish after SIGTERM (or after their pod is removed), as
//! ztunnel derives it: an explicit `CONNECTION_TERMINATION_DEADLINE`, else a little less than
//! the pod's `TERMINATION_GRACE_PERIOD_SECONDS` (which Istio's chart always sets), else 5 s.
//!
//! The margin below the grace period exists because the kubelet SIGKILLs the pod when the
//! grace period ends: cutting the remaining connections ourselves a few seconds earlier closes
//! them cleanly (TLS close, HTTP/2 reset) instead of leaving peers to time out on a vanished
//! socket.

use std::time::Duration;

use super::env::{invalid, parse_duration, Env};
use super::ConfigError;

/// ztunnel's deadline when nothing is set.
pub(super) const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The drain deadline. `DRAIN_TIMEOUT` is this project's older name for the explicit deadline;
/// it and `CONNECTION_TERMINATION_DEADLINE` are the same setting, so setting both is refused
/// rather than one silently winning.
pub(super) fn deadline(env: &Env<'_>) -> Result<Duration, ConfigError> {
    match (
        env.get("CONNECTION_TERMINATION_DEADLINE"),
        env.get("DRAIN_TIMEOUT"),
    ) {
        (Some(_), Some(_)) => Err(invalid(
            "DRAIN_TIMEOUT",
            env.get("DRAIN_TIMEOUT").unwrap_or_default(),
            "CONNECTION_TERMINATION_DEADLINE is set too; they are the same setting, keep one",
        )),
        (Some(v), None) => explicit("CONNECTION_TERMINATION_DEADLINE", v),
        (None, Some(v)) => explicit("DRAIN_TIMEOUT", v),
        (None, None) => match env.get("TERMINATION_GRACE_PERIOD_SECONDS") {
            None => Ok(DEFAULT_DEADLINE),
            Some(v) => v.parse::<u64>().map(from_grace_period).map_err(|_| {
                invalid(
                    "TERMINATION_GRACE_PERIOD_SECONDS",
                    v,
                    "expected a whole number of seconds (the pod's terminationGracePeriodSeconds)",
                )
            }),
        },
    }
}

/// A duration (`30s`, `1m30s`) or, as ztunnel also accepts, a bare number of seconds.
fn explicit(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match value.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => parse_duration(value).ok_or_else(|| {
            invalid(
                var,
                value,
                "expected a duration such as 10s, 1m or 500ms, or whole seconds",
            )
        }),
    }
}

/// ztunnel's rule: five seconds before the kubelet's SIGKILL for a grace period above 10 s,
/// one second before it for a shorter one, and never less than one second.
pub(super) fn from_grace_period(secs: u64) -> Duration {
    let margin = if secs > 10 { 5 } else { 1 };
    Duration::from_secs(secs.saturating_sub(margin).max(1))
}
