//! `nodetunnel check-config`: the configuration loaded exactly as start-up loads it, described
//! as JSON (what the tunnel will serve, and which of the given variables it read), so a
//! deployment's environment can be checked without starting the daemon (tests/manifests.rs
//! feeds it the env of the rendered DaemonSet).

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::env::Env;
use super::{CaSource, Config, ConfigError, ConfigSource, Mode};

/// Read outside [`Config`]: the log filter and format (`nodetunnel_base::logging`) and the
/// standard library's backtrace switch (Istio's chart sets it).
pub const PROCESS_VARIABLES: [&str; 3] = ["RUST_LOG", "LOG_FORMAT", "RUST_BACKTRACE"];

/// Set by Istio's ztunnel chart, accepted and deliberately not used: ztunnel itself reads no
/// `INPOD_ENABLED`, and uses `SERVICE_ACCOUNT` only for a metrics-over-HBONE listener this
/// tunnel does not have (README, "Environment variables").
pub const ACCEPTED_UNUSED: [&str; 2] = ["INPOD_ENABLED", "SERVICE_ACCOUNT"];

/// Loads `vars` as [`Config::from_vars`] does and reports the outcome: on success the
/// addresses served and where config and certificates come from, plus `variables.read` (the
/// names the loader looked up, `<prefix>*` for families) and `variables.ignored` (given, and
/// neither read nor listed in [`PROCESS_VARIABLES`] or [`ACCEPTED_UNUSED`]). A variable can be
/// ignored because nobody reads it (a typo) or because another setting makes it moot (say
/// `TERMINATION_GRACE_PERIOD_SECONDS` next to `CONNECTION_TERMINATION_DEADLINE`).
pub fn check_vars(vars: &HashMap<String, String>) -> Result<Value, ConfigError> {
    let env = Env::new(vars);
    let config = Config::from_env_reader(&env)?;
    let read = env.consulted();
    let ignored: BTreeSet<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|name| !is_read(&read, name))
        .filter(|name| !PROCESS_VARIABLES.contains(name) && !ACCEPTED_UNUSED.contains(name))
        .collect();
    Ok(json!({
        "mode": mode(&config.mode),
        "listen": {
            "admin": config.listen.admin_addr.to_string(),
            "metrics": config.listen.metrics_addr.to_string(),
            "readiness": config.listen.readiness_addr.to_string(),
            // The DNS proxy's UDP+TCP address in each scope's namespace; null when off.
            "dns": config.dns.enabled.then(|| config.dns.addr.to_string()),
        },
        "config_source": match &config.source {
            ConfigSource::File(path) => json!({"file": path.display().to_string()}),
            ConfigSource::Xds(xds) => json!({"xds": xds.target.address}),
        },
        "ca": match &config.ca.source {
            CaSource::Fake => json!("fake"),
            CaSource::LocalDir(dir) => json!({"dir": dir.display().to_string()}),
            CaSource::Remote(target) => json!({"address": target.address}),
        },
        "node_name": config.node_name,
        "worker_threads": config.worker_threads,
        "drain_timeout_ms": u64::try_from(config.drain_timeout.as_millis()).unwrap_or(u64::MAX),
        "variables": {
            "read": read,
            "ignored": ignored,
        },
    }))
}

fn is_read(read: &BTreeSet<String>, name: &str) -> bool {
    read.contains(name)
        || read
            .iter()
            .filter_map(|r| r.strip_suffix('*'))
            .any(|prefix| name.starts_with(prefix))
}

fn mode(mode: &Mode) -> Value {
    match mode {
        Mode::Dedicated { .. } => json!({"dedicated": {}}),
        Mode::Shared(inpod) => json!({"shared": {
            "zds_socket": inpod.uds.display().to_string(),
            "mark": inpod.mark,
        }}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ignored(report: &Value) -> Vec<&str> {
        report["variables"]["ignored"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }

    #[test]
    fn a_typo_and_a_setting_made_moot_by_another_are_ignored_and_chart_extras_are_not() {
        let report = check_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/mesh.yaml"),
            ("FAKE_CA", "true"),
            // Only read for a control plane, and the config comes from a file.
            ("XDS_ROOT_CA", "/root.pem"),
            ("INPOD_UDS_PATH", "/x"),
            ("XDS_HEADER_tenant", "a"),
            ("INPOD_ENABLED", "true"),
            ("RUST_LOG", "debug"),
        ]))
        .unwrap();
        assert_eq!(
            ignored(&report),
            ["INPOD_UDS_PATH", "XDS_HEADER_tenant", "XDS_ROOT_CA"]
        );
        assert_eq!(report["listen"]["readiness"], "[::]:15021");
        assert_eq!(report["config_source"]["file"], "/mesh.yaml");
    }

    #[test]
    fn prefix_families_count_as_read_when_their_service_is_configured() {
        let report = check_vars(&vars(&[
            ("XDS_ADDRESS", "https://istiod:15012"),
            ("XDS_ROOT_CA", "SYSTEM"),
            ("XDS_HEADER_tenant", "a"),
            ("ISTIO_META_ISTIO_VERSION", "1.26"),
            ("FAKE_CA", "true"),
        ]))
        .unwrap();
        assert_eq!(ignored(&report), Vec::<&str>::new());
    }

    #[test]
    fn a_bad_value_is_the_loaders_error() {
        let err = check_vars(&vars(&[("FAKE_CA", "maybe"), ("LOCAL_XDS_PATH", "/m")])).unwrap_err();
        assert!(err.to_string().contains("FAKE_CA=\"maybe\""), "{err}");
    }
}
