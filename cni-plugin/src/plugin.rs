//! The chained CNI plugin (Istio's `istio-cni` plugin, ambient part). The runtime runs it
//! after the primary plugin for every pod sandbox, with `CNI_*` in the environment and the
//! network config (this plugin's conflist entry plus `prevResult`) on stdin.
//!
//! - `VERSION`: the supported spec versions.
//! - `ADD`: pass `prevResult` on (in the config's `cniVersion`); when `ambient_enabled` and the
//!   pod is ambient (see `ambient`; pod and namespace fetched from the API), tell the
//!   agent and wait for it. Any failure fails the `ADD` — fail closed: an ambient pod never
//!   starts without its redirection.
//! - `DEL`, `CHECK`, `STATUS`, `GC`: succeed without output; the plugin holds no state (the
//!   agent unenrolls pods from its own watch).
//!
//! stdout carries only the result or the error JSON; logs go to stderr.

mod args;
pub(crate) mod config;
mod error;
mod kube;
mod result;
#[cfg(test)]
mod tests;
mod version;

use std::io::{Read, Write};

use serde_json::{Map, Value};
use tracing::{debug, info};

use crate::ambient::{Decision, EnrollmentRules};
use crate::event::{self, PluginEvent};
use args::{Command, Invocation};
/// The plugin's flat config, which the installer writes into the conflist entry.
pub use config::PluginConfig;
use config::KUBECONFIG_NAME;
use error::PluginError;

/// What an invocation produced: the JSON for stdout (if any) and the exit code.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub stdout: Option<Value>,
    pub exit_code: i32,
}

/// Runs the plugin with the process's environment and stdin; returns the exit code.
pub fn main() -> i32 {
    let lookup = |name: &str| std::env::var(name).ok();
    // VERSION needs no config; not reading stdin lets a person run it from a terminal.
    let wants_stdin = lookup("CNI_COMMAND").as_deref() != Some("VERSION");
    let mut stdin = Vec::new();
    let read = if wants_stdin {
        std::io::stdin().read_to_end(&mut stdin).map(drop)
    } else {
        Ok(())
    };
    init_logging(&stdin);
    let outcome = match read {
        Ok(()) => run(lookup, &stdin),
        Err(e) => failure(PluginError::ReadStdin(e), version::VERSION_OUTPUT),
    };
    if let Some(json) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone; the exit code still tells.
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
    outcome.exit_code
}

/// One invocation: `env` looks up environment variables, `stdin` is the network config.
pub(crate) fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let invocation = match Invocation::from_env(&env) {
        Ok(i) => i,
        Err(e) => return failure(e.into(), &version_hint(stdin)),
    };
    if invocation.command == Command::Version {
        return Outcome {
            stdout: Some(version::version_info()),
            exit_code: 0,
        };
    }
    let (config, raw) = match parse_config(stdin) {
        Ok(parsed) => parsed,
        Err(e) => return failure(e, &version_hint(stdin)),
    };
    match execute(&invocation, &config, &raw) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => failure(e, &config.cni_version),
    }
}

fn failure(error: PluginError, cni_version: &str) -> Outcome {
    tracing::error!(code = error.code(), "{}", error.details());
    Outcome {
        stdout: Some(error.to_json(cni_version)),
        exit_code: 1,
    }
}

/// The config's `cniVersion` if it is one we speak (for error JSON before the config is
/// fully decoded), else [`version::VERSION_OUTPUT`].
fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::VERSION_OUTPUT.to_string())
}

/// The typed config plus the raw object (for `prevResult` and anything we do not model).
fn parse_config(stdin: &[u8]) -> Result<(PluginConfig, Map<String, Value>), PluginError> {
    let raw: Map<String, Value> =
        serde_json::from_slice(stdin).map_err(PluginError::DecodeConfig)?;
    let config: PluginConfig =
        serde_json::from_value(Value::Object(raw.clone())).map_err(PluginError::DecodeConfig)?;
    if !version::is_supported(&config.cni_version) {
        return Err(PluginError::UnsupportedVersion {
            version: config.cni_version,
        });
    }
    Ok((config, raw))
}

fn execute(
    invocation: &Invocation,
    config: &PluginConfig,
    raw: &Map<String, Value>,
) -> Result<Option<Value>, PluginError> {
    match invocation.command {
        Command::Add => add(invocation, config, raw).map(Some),
        Command::Del | Command::Check => Ok(None),
        Command::Status | Command::Gc => {
            if version::has_status_and_gc(&config.cni_version) {
                Ok(None)
            } else {
                Err(PluginError::VerbNeedsNewerVersion {
                    command: invocation.command.to_string(),
                    version: config.cni_version.clone(),
                })
            }
        }
        // Answered before the config is read.
        Command::Version => Ok(Some(version::version_info())),
    }
}

/// Everything `ADD` decodes from its input before any API call or socket: the `CNI_*`
/// variables (`CNI_ARGS` included), the config, `prevResult` converted to the config's
/// version, the enrollment rules and name-based skips, and the pod addresses the agent
/// would be sent. For the fuzz target, which must not reach the API server; `add` runs the
/// same steps in the same order.
pub(crate) fn decode_add(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Vec<event::EventIp>, PluginError> {
    let invocation = Invocation::from_env(&env)?;
    let (config, raw) = parse_config(stdin)?;
    invocation.add_params()?;
    let result = match raw.get("prevResult") {
        None | Some(Value::Null) => result::empty(&config.cni_version),
        Some(prev) => {
            result::convert(prev, &config.cni_version).map_err(PluginError::PrevResult)?
        }
    };
    let k8s = invocation.k8s()?;
    let rules = EnrollmentRules::from_plugin_config(&config)?;
    if let Some((namespace, name)) = k8s.pod() {
        let _ = rules.skip_by_name(namespace, name);
    }
    result::event_ips(&result).map_err(PluginError::PrevResult)
}

fn add(
    invocation: &Invocation,
    config: &PluginConfig,
    raw: &Map<String, Value>,
) -> Result<Value, PluginError> {
    let params = invocation.add_params()?;
    let result = match raw.get("prevResult") {
        None | Some(Value::Null) => result::empty(&config.cni_version),
        Some(prev) => {
            result::convert(prev, &config.cni_version).map_err(PluginError::PrevResult)?
        }
    };
    if !config.ambient_enabled {
        debug!("ambient is not enabled in the config; passing the result on");
        return Ok(result);
    }
    let k8s = invocation.k8s()?;
    let Some((namespace, name)) = k8s.pod() else {
        debug!("CNI_ARGS names no Kubernetes pod; passing the result on");
        return Ok(result);
    };
    let rules = EnrollmentRules::from_plugin_config(config)?;
    // Before any API call: excluded namespaces and the agent's own pods (which must start
    // even when the agent is down and its kubeconfig missing).
    if let Some(reason) = rules.skip_by_name(namespace, name) {
        info!(pod = %format!("{namespace}/{name}"), "not enrolling: {reason}");
        return Ok(result);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PluginError::Runtime)?;
    runtime.block_on(async {
        let kubeconfig = config.cni_agent_run_dir.join(KUBECONFIG_NAME);
        let (pod, ns) = kube::lookup(&kubeconfig, namespace, name).await?;
        match rules.decide(&pod, Some(&ns)) {
            Decision::Skip(reason) => {
                info!(pod = %format!("{namespace}/{name}"), "not enrolling: {reason}");
            }
            Decision::Enroll => {
                let event = PluginEvent {
                    netns: params.netns.to_string(),
                    pod_name: name.to_string(),
                    pod_namespace: namespace.to_string(),
                    ips: result::event_ips(&result).map_err(PluginError::PrevResult)?,
                };
                let ips: Vec<String> = event.ips.iter().map(|i| i.address.to_string()).collect();
                info!(pod = %format!("{namespace}/{name}"), ?ips, "enrolling with the node agent");
                event::send_add(&config.cni_agent_run_dir, &event).await?;
            }
        }
        Ok::<_, PluginError>(())
    })?;
    Ok(result)
}

/// Logs to stderr only, at the config's `plugin_log_level` (Istio's levels: debug, info,
/// warn, error, none), `info` when it is absent or unknown. The level applies to this crate;
/// libraries (kube, hyper, rustls) log warnings and errors only.
fn init_logging(stdin: &[u8]) {
    let level = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("plugin_log_level")?.as_str().map(str::to_lowercase))
        .unwrap_or_default();
    let directive = match level.as_str() {
        "none" | "off" => "off",
        "trace" | "debug" | "info" | "error" => level.as_str(),
        "warn" | "warning" => "warn",
        _ => "info",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,nodetunnel_cni={directive}"
        )))
        .try_init();
}
