//! The plugin's flat network config: the conflist entry the agent writes and the runtime hands
//! the plugin on stdin, with Istio's field names. Unknown keys are ignored (they are kept in
//! the raw JSON the runtime passes, e.g. `prevResult`, `runtimeConfig`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Istio's default `cni_agent_run_dir`.
pub const DEFAULT_RUN_DIR: &str = "/var/run/istio-cni";
/// Kubeconfig file name under the run dir, written by the agent for the plugin.
pub const KUBECONFIG_NAME: &str = "istio-cni-kubeconfig";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginConfig {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default = "default_log_level")]
    pub plugin_log_level: String,
    #[serde(default = "default_run_dir")]
    pub cni_agent_run_dir: PathBuf,
    #[serde(default)]
    pub ambient_enabled: bool,
    /// Label selectors (Istio's `enablement_selectors`): `[]` selects nothing, as in Istio;
    /// absent means the chart's defaults (our agent always writes the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enablement_selectors: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// The agent's own namespace (its pods are never enrolled).
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub native_nftables: bool,
}

fn default_log_level() -> String {
    "info".into()
}

fn default_run_dir() -> PathBuf {
    DEFAULT_RUN_DIR.into()
}
