//! Every way the plugin can fail, and the one place that maps each to the CNI error JSON
//! (`{"cniVersion", "code", "msg", "details"}` on stdout, non-zero exit; CNI spec "Error").
//!
//! Codes — the spec's well-known ones where they fit, plugin-specific ones (100+) otherwise:
//! | code | meaning here |
//! |---|---|
//! | 1 | incompatible CNI version (config, `prevResult`, or a 1.1.0 verb under an older config) |
//! | 4 | invalid environment (`CNI_COMMAND` unknown/missing, `ADD` without `CNI_CONTAINERID`/`CNI_NETNS`/`CNI_IFNAME`, malformed `CNI_ARGS`) |
//! | 5 | I/O failure (reading stdin, starting the async runtime) |
//! | 6 | undecodable content (config or `prevResult` not what the spec says) |
//! | 7 | invalid network config (bad `enablement_selectors`) |
//! | 11 | try again later: the API server or the agent cannot be reached, or too slow, or the kubeconfig the agent writes is not there yet |
//! | 100 | the API server answered the pod/namespace lookup with an error (e.g. 404, 403) |
//! | 101 | the agent refused to enroll the pod (it answered non-200) |

use std::error::Error as _;
use std::io;

use serde::Serialize;

use super::args::ArgsError;
use super::kube::KubeError;
use super::result::ResultError;
use crate::ambient::SelectorError;
use crate::event::EventError;

pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const INVALID_ENVIRONMENT: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const KUBE_LOOKUP_FAILED: u32 = 100;
pub const AGENT_REFUSED: u32 = 101;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("reading the network config from stdin: {0}")]
    ReadStdin(#[source] io::Error),
    #[error("decoding the network config from stdin: {0}")]
    DecodeConfig(#[source] serde_json::Error),
    #[error("cniVersion {version:?} is not supported (supported: {})", super::version::SUPPORTED.join(", "))]
    UnsupportedVersion { version: String },
    #[error("{command} needs cniVersion 1.1.0 or later, the config has {version:?}")]
    VerbNeedsNewerVersion { command: String, version: String },
    #[error("passing on prevResult: {0}")]
    PrevResult(#[source] ResultError),
    #[error("invalid enablement_selectors: {0}")]
    Selectors(#[from] SelectorError),
    #[error("starting the plugin's async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("looking up the pod: {0}")]
    Kube(#[from] KubeError),
    #[error("enrolling the pod with the CNI agent: {0}")]
    Event(#[from] EventError),
}

impl PluginError {
    pub fn code(&self) -> u32 {
        match self {
            PluginError::Args(_) => INVALID_ENVIRONMENT,
            PluginError::ReadStdin(_) | PluginError::Runtime(_) => IO_FAILURE,
            PluginError::DecodeConfig(_) => DECODE_FAILURE,
            PluginError::UnsupportedVersion { .. } | PluginError::VerbNeedsNewerVersion { .. } => {
                INCOMPATIBLE_VERSION
            }
            PluginError::PrevResult(ResultError::UnsupportedVersion(_)) => INCOMPATIBLE_VERSION,
            PluginError::PrevResult(_) => DECODE_FAILURE,
            PluginError::Selectors(_) => INVALID_CONFIG,
            PluginError::Kube(e) if e.is_transient() => TRY_AGAIN_LATER,
            PluginError::Kube(_) => KUBE_LOOKUP_FAILED,
            PluginError::Event(e) if e.is_transient() => TRY_AGAIN_LATER,
            PluginError::Event(_) => AGENT_REFUSED,
        }
    }

    /// A short summary for `msg`.
    pub fn summary(&self) -> &'static str {
        match self {
            PluginError::Args(_) => "invalid CNI environment",
            PluginError::ReadStdin(_) => "cannot read the network config",
            PluginError::DecodeConfig(_) => "cannot decode the network config",
            PluginError::UnsupportedVersion { .. } => "incompatible CNI version",
            PluginError::VerbNeedsNewerVersion { .. } => {
                "command not available in this CNI version"
            }
            PluginError::PrevResult(_) => "invalid prevResult",
            PluginError::Selectors(_) => "invalid network config",
            PluginError::Runtime(_) => "cannot start the plugin",
            PluginError::Kube(_) => "istio-cni: cannot determine whether the pod is ambient",
            PluginError::Event(_) => "istio-cni: failed to enroll the pod with the node agent",
        }
    }

    /// The whole chain of causes, for `details`.
    pub fn details(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // thiserror messages usually embed their source already.
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    /// The CNI error object for a config of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let body = CniErrorJson {
            cni_version,
            code: self.code(),
            msg: self.summary(),
            details: self.details(),
        };
        // A struct of strings and a number always serializes.
        serde_json::to_value(body).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct CniErrorJson<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    details: String,
}

#[cfg(test)]
mod tests;
