//! `PROXY_MODE` and the settings that only make sense in one mode, read together so a mode
//! can never carry the other mode's settings.

use std::path::PathBuf;

use super::env::{invalid, Env};
use super::ConfigError;

/// How the tunnel runs, with the settings of that mode and no other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `PROXY_MODE=dedicated`: the tunnel serves workloads from its own network namespace.
    /// `workload` (`PROXY_WORKLOAD_INFO`) narrows it to the one workload it fronts.
    Dedicated { workload: Option<ProxyWorkloadInfo> },
    /// `PROXY_MODE=shared` (in-pod; the default, as in ztunnel, whose chart never sets the
    /// variable): the CNI agent hands the tunnel pod network namespaces over ZDS and the tunnel
    /// runs a proxy inside each.
    Shared(InpodConfig),
}

/// `PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>`: in dedicated mode, restricts the
/// tunnel to the one workload it fronts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyWorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Shared (in-pod) mode settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InpodConfig {
    /// `INPOD_UDS`: the node agent's ZDS socket (SOCK_SEQPACKET) the tunnel connects to.
    pub uds: PathBuf,
    /// `PACKET_MARK` (older name `INPOD_MARK`): SO_MARK on every socket the tunnel opens inside
    /// a pod, which the in-pod rules exempt from redirection.
    pub mark: u32,
    /// `INPOD_PORT_REUSE`: SO_REUSEPORT on the in-pod listeners, so a new tunnel can bind next
    /// to one that is still draining.
    pub port_reuse: bool,
}

/// Istio's node agent socket path.
pub(crate) const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";

impl Mode {
    pub(super) fn from_env(env: &Env<'_>) -> Result<Mode, ConfigError> {
        match env.get("PROXY_MODE").unwrap_or("shared") {
            "dedicated" => Ok(Mode::Dedicated {
                workload: env
                    .get("PROXY_WORKLOAD_INFO")
                    .map(ProxyWorkloadInfo::parse)
                    .transpose()?,
            }),
            "shared" => {
                if let Some(info) = env.get("PROXY_WORKLOAD_INFO") {
                    return Err(invalid(
                        "PROXY_WORKLOAD_INFO",
                        info,
                        "only meaningful with PROXY_MODE=dedicated; in shared mode each pod's identity comes from the node agent",
                    ));
                }
                Ok(Mode::Shared(InpodConfig::from_env(env)?))
            }
            other => Err(invalid(
                "PROXY_MODE",
                other,
                "expected \"dedicated\" or \"shared\"",
            )),
        }
    }
}

impl ProxyWorkloadInfo {
    fn parse(value: &str) -> Result<ProxyWorkloadInfo, ConfigError> {
        match value.split('/').collect::<Vec<_>>().as_slice() {
            [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                Ok(ProxyWorkloadInfo {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err(invalid(
                "PROXY_WORKLOAD_INFO",
                value,
                "expected <namespace>/<name>/<service account>",
            )),
        }
    }
}

impl InpodConfig {
    fn from_env(env: &Env<'_>) -> Result<InpodConfig, ConfigError> {
        let mark_var = if env.get("PACKET_MARK").is_some() {
            "PACKET_MARK"
        } else {
            "INPOD_MARK"
        };
        let mark = env.number(mark_var, u64::from(crate::socket::TUNNEL_MARK))?;
        let mark = u32::try_from(mark)
            .ok()
            .filter(|m| *m != 0)
            .ok_or_else(|| {
                invalid(
                    mark_var,
                    &mark.to_string(),
                    "expected a mark in 1..=4294967295",
                )
            })?;
        Ok(InpodConfig {
            uds: PathBuf::from(env.get("INPOD_UDS").unwrap_or(DEFAULT_INPOD_UDS)),
            mark,
            port_reuse: env.bool("INPOD_PORT_REUSE", true)?,
        })
    }
}
