//! The pod event the plugin sends the agent on `ADD` (Istio's `CNIPluginAddEvent` shape):
//! JSON POSTed to `http://unix/cmdadd` over `<cni_agent_run_dir>/pluginevent.sock`. The agent
//! answers 200 (enrolled, or nothing to do), 400 (bad event) or 500 (enrollment failed), with
//! a text body that says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Socket file name under the run dir.
pub const SOCKET_NAME: &str = "pluginevent.sock";
/// HTTP path of the add event.
pub const ADD_PATH: &str = "/cmdadd";
/// How long the plugin waits for the agent's answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One `ADD` for a pod that the plugin decided is ambient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    /// The pod sandbox's netns path as the runtime gave it (`CNI_NETNS`).
    #[serde(rename = "Netns")]
    pub netns: String,
    #[serde(rename = "PodName")]
    pub pod_name: String,
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    /// The pod's addresses from the previous plugins' result, without prefix length.
    #[serde(rename = "IPs", default)]
    pub ips: Vec<String>,
}

/// `<run_dir>/pluginevent.sock`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}
