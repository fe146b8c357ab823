//! Value parsers with the meaning Istio's Go agent gives its settings, so a value the chart
//! (or a user of it) writes is read the same way, and a value Istio would reject fails here too.

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "{value:?} is not a boolean (Go's ParseBool: true/false, 1/0, t/f, TRUE/FALSE)"
        )),
    }
}

/// Go's `GOMEMLIMIT`: a byte count with an optional unit (`B`, `KiB`, `MiB`, `GiB`, `TiB`),
/// or `off`. Returns the bytes (`u64::MAX` for `off`).
pub fn go_mem_limit(value: &str) -> Result<u64, String> {
    if value == "off" {
        return Ok(u64::MAX);
    }
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "{value:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{value:?} is not a byte count (digits, then an optional unit)"))
}

/// Istio's levels, in its order, and the tracing level each maps to.
const LEVELS: [(&str, &str); 5] = [
    ("none", "off"),
    ("error", "error"),
    ("warn", "warn"),
    ("info", "info"),
    ("debug", "debug"),
];

/// Istio's `--log_output_level`: `<level>` or `<scope>:<level>[,<scope>:<level>...]`. The
/// `default` scope (or a bare level) sets the whole process's level; Istio's other scopes name
/// Go packages with no counterpart here, so only their levels are checked. Returns the tracing
/// filter.
pub fn istio_log_level(value: &str) -> Result<String, String> {
    let level = |name: &str| {
        LEVELS
            .iter()
            .find(|(istio, _)| *istio == name)
            .map(|(_, tracing)| tracing.to_string())
            .ok_or_else(|| {
                format!("{value:?}: unknown level {name:?} (none, error, warn, info, debug)")
            })
    };
    let mut filter = "info".to_string();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once(':') {
            None => filter = level(item)?,
            Some((scope, name)) => {
                let tracing = level(name)?;
                if scope == "default" {
                    filter = tracing;
                }
            }
        }
    }
    Ok(filter)
}

/// `RECONCILE_INTERVAL`: a whole number of seconds (`5s`) or milliseconds (`500ms`), from
/// 100 ms to one hour. Below that the pass (an `iptables-save` per pod) would busy the node;
/// above it a broken pod would go unnoticed for too long.
pub fn reconcile_interval(value: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let parsed = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(s) = value.strip_suffix('s') {
        s.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        None
    };
    match parsed {
        Some(d) if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) => Ok(d),
        Some(_) => Err(format!("{value:?} is outside 100ms..3600s")),
        None => Err(format!(
            "{value:?} is not a duration: a whole number followed by s or ms (e.g. 5s, 500ms)"
        )),
    }
}
