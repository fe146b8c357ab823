//! The data path's worker thread count, sized as ztunnel sizes it from the pod's CPU settings.
//!
//! Istio's chart passes the CPU limit through the downward API as `ZTUNNEL_CPU_LIMIT` — which
//! the kubelet fills with the node's allocatable cores when no limit is set, so it cannot tell
//! "limited to every core" from "unlimited" — and, only when the operator set them,
//! `ZTUNNEL_RESOURCE_CPU_LIMIT` and `ZTUNNEL_RESOURCE_CPU_REQUEST`. Precedence:
//!
//! 1. `ZTUNNEL_WORKER_THREADS`: a count, `0` for one per available core, or `<n>%` of them
//!    (rounded up). `WORKER_THREADS`, this project's older variable, is a plain count in the
//!    same place; setting both is refused.
//! 2. `ZTUNNEL_RESOURCE_CPU_LIMIT` (an explicit limit, rounded up to whole cores), raised to
//!    `ZTUNNEL_RESOURCE_CPU_REQUEST` if that is higher.
//! 3. A quarter of the available cores (rounded up), at least the request, at least 2.
//!
//! "Available cores" is `ZTUNNEL_RESOURCE_CPU_LIMIT`, else `ZTUNNEL_CPU_LIMIT`, else what the
//! kernel lets this process run on (affinity and cgroup quota). The result is at least 1.

use super::env::{invalid, Env};
use super::ConfigError;

/// ztunnel's floor when it sizes by itself.
const DEFAULT_WORKER_THREADS: usize = 2;
/// The share of the available cores used when no explicit limit is set.
const CPU_FRACTION: f64 = 0.25;

/// The worker count for `env`; `host_cores` is asked only when no variable names the cores.
pub(super) fn worker_threads(
    env: &Env<'_>,
    host_cores: impl Fn() -> usize,
) -> Result<usize, ConfigError> {
    let cores = || -> Result<usize, ConfigError> {
        match cpu_quantity(env, "ZTUNNEL_RESOURCE_CPU_LIMIT")? {
            Some(limit) => Ok(limit),
            None => match env.get("ZTUNNEL_CPU_LIMIT") {
                Some(v) => v.parse::<usize>().map_err(|_| {
                    invalid(
                        "ZTUNNEL_CPU_LIMIT",
                        v,
                        "expected a whole number of cores (the chart's limits.cpu, divisor 1)",
                    )
                }),
                None => Ok(host_cores()),
            },
        }
    };
    let threads =
        match (env.get("ZTUNNEL_WORKER_THREADS"), env.get("WORKER_THREADS")) {
            (Some(_), Some(old)) => {
                return Err(invalid(
                    "WORKER_THREADS",
                    old,
                    "ZTUNNEL_WORKER_THREADS is set too; they are the same setting, keep one",
                ))
            }
            (Some(v), None) => explicit(v, cores)?,
            (None, Some(v)) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                invalid("WORKER_THREADS", v, "expected a whole number of at least 1")
            })?,
            (None, None) => {
                let request = cpu_quantity(env, "ZTUNNEL_RESOURCE_CPU_REQUEST")?.unwrap_or(0);
                match cpu_quantity(env, "ZTUNNEL_RESOURCE_CPU_LIMIT")? {
                    Some(limit) => limit.max(request),
                    None => {
                        let share = (cores()? as f64 * CPU_FRACTION).ceil() as usize;
                        share.max(request).max(DEFAULT_WORKER_THREADS)
                    }
                }
            }
        };
    // The runtime refuses zero workers (a limit of "0" cores, or 0% of nothing).
    Ok(threads.max(1))
}

/// `ZTUNNEL_WORKER_THREADS=<n>`, `0` (every core) or `<p>%` (of the cores, rounded up).
fn explicit(
    value: &str,
    cores: impl Fn() -> Result<usize, ConfigError>,
) -> Result<usize, ConfigError> {
    const VAR: &str = "ZTUNNEL_WORKER_THREADS";
    if let Some(percent) = value.strip_suffix('%') {
        let percent: f64 = percent
            .trim()
            .parse()
            .map_err(|_| invalid(VAR, value, "expected a number before %"))?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(invalid(
                VAR,
                value,
                "a percentage must be above 0 and at most 100",
            ));
        }
        return Ok(((cores()? as f64 * percent / 100.0).ceil() as usize).max(1));
    }
    match value.parse::<usize>() {
        Ok(0) => cores(),
        Ok(n) => Ok(n),
        Err(_) => Err(invalid(
            VAR,
            value,
            "expected a thread count, 0 (one per core) or a percentage of the cores such as 50%",
        )),
    }
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`) in whole cores, rounded up; must be positive.
fn cpu_quantity(env: &Env<'_>, var: &'static str) -> Result<Option<usize>, ConfigError> {
    let Some(raw) = env.get(var) else {
        return Ok(None);
    };
    let cores = match raw.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map(|m| m / 1000.0),
        None => raw.parse::<f64>(),
    };
    match cores {
        // The upper bound keeps the conversion to a count exact (no saturating casts).
        Ok(c) if c.is_finite() && c > 0.0 && c <= 65536.0 => Ok(Some(c.ceil() as usize)),
        _ => Err(invalid(
            var,
            raw,
            "expected a positive CPU quantity such as 2, 1.5 or 500m",
        )),
    }
}
