//! `nodetunnel-cni-agent --check-config`: the settings parsed and refused exactly as at
//! start-up, reported as JSON without touching the host or the API server, so deployment
//! manifests can be checked against the agent's own parser (tests/manifests.rs).

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde_json::{json, Value};

use super::config::AgentConfig;
use super::AgentError;

/// Read besides the settings: the Kubernetes client's (`kube::Config::infer`: a kubeconfig, or
/// the in-cluster service variables), the log format (`nodetunnel_base::logging`) and the
/// standard library's backtrace switch.
pub const PROCESS_VARIABLES: [&str; 5] = [
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "LOG_FORMAT",
    "RUST_BACKTRACE",
];

/// Every environment variable a setting of [`AgentConfig`] is read from (clap's `env`).
pub fn setting_variables() -> BTreeSet<String> {
    AgentConfig::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The start-up checks of `config` (see `agent::run`), then the report: where `/healthz`,
/// `/readyz` and `/metrics` are served, the sockets and directories used, and which of `vars`
/// (the process environment) the agent reads and ignores.
pub(crate) fn check(
    config: &AgentConfig,
    vars: impl Iterator<Item = String>,
) -> Result<Value, AgentError> {
    if config.native_nftables {
        return Err(AgentError::Nftables);
    }
    config.check()?;
    let read = setting_variables();
    let ignored: BTreeSet<String> = vars
        .filter(|name| !read.contains(name) && !PROCESS_VARIABLES.contains(&name.as_str()))
        .collect();
    Ok(json!({
        "health": config.health_addr.to_string(),
        "metrics": config.metrics_addr().to_string(),
        "zds_socket": config.ztunnel_uds_address.display().to_string(),
        "event_socket": config.event_socket().display().to_string(),
        "cni_net_dir": config.mounted_cni_net_dir.display().to_string(),
        "cni_bin_dir": config.host_cni_bin_dir.display().to_string(),
        "proc_root": config.proc_root().display().to_string(),
        "daemonset": format!("{}/{}", config.pod_namespace, config.daemonset_name),
        "ambient_enabled": config.ambient_enabled,
        "variables": {
            "read": read,
            "ignored": ignored,
        },
    }))
}
