//! What the runtime tells the plugin through the environment (CNI spec, "Parameters"):
//! `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.
//! `CNI_ARGS` is `KEY=VALUE;KEY=VALUE`; Kubernetes runtimes put the pod's identity there
//! (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`, as
//! containerd and CRI-O do) plus keys like `IgnoreUnknown=1`; keys we do not know are ignored.
//! An empty variable counts as unset, as in the CNI library's `skel`.

use std::fmt;

/// The operation asked for by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    /// Spec 1.1.0: is the plugin ready for `ADD`s?
    Status,
    /// Spec 1.1.0: release resources of attachments no longer valid.
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, ArgsError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => return Err(ArgsError::UnknownCommand(other.to_string())),
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        })
    }
}

/// Something wrong with the plugin's environment (CNI error code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    #[error("CNI_COMMAND={0:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC")]
    UnknownCommand(String),
    #[error("required environment variables missing: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("CNI_ARGS: {pair:?} is not a KEY=VALUE pair")]
    MalformedArgs { pair: String },
}

/// The Kubernetes keys of `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sArgs {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
}

impl K8sArgs {
    /// Parses `CNI_ARGS`. Empty segments (a trailing `;`) are skipped; a segment without `=`
    /// is an error; values may contain `=`.
    pub fn parse(cni_args: &str) -> Result<K8sArgs, ArgsError> {
        let mut args = K8sArgs::default();
        for pair in cni_args.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ArgsError::MalformedArgs {
                    pair: pair.to_string(),
                })?;
            let slot = match key.trim() {
                "K8S_POD_NAME" => &mut args.pod_name,
                "K8S_POD_NAMESPACE" => &mut args.pod_namespace,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.pod_infra_container_id,
                "K8S_POD_UID" => &mut args.pod_uid,
                _ => continue,
            };
            let value = value.trim();
            *slot = (!value.is_empty()).then(|| value.to_string());
        }
        Ok(args)
    }

    /// `(namespace, name)` when the runtime said which pod this is.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((self.pod_namespace.as_deref()?, self.pod_name.as_deref()?))
    }
}

/// One invocation's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// Raw `CNI_ARGS`, parsed only by the commands that need it (see [`Invocation::k8s`]),
    /// so a `DEL` never fails over it.
    pub cni_args: Option<String>,
}

/// The parameters `ADD` cannot do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddParams<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `lookup` (the process environment in `main`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Invocation, ArgsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let command = Command::parse(&get("CNI_COMMAND").ok_or(ArgsError::MissingCommand)?)?;
        Ok(Invocation {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            cni_args: get("CNI_ARGS"),
        })
    }

    /// The Kubernetes keys of `CNI_ARGS`.
    pub fn k8s(&self) -> Result<K8sArgs, ArgsError> {
        K8sArgs::parse(self.cni_args.as_deref().unwrap_or_default())
    }

    /// `ADD` needs the container id, the netns (sent to the agent) and the interface name;
    /// the error names every one that is missing.
    pub fn add_params(&self) -> Result<AddParams<'_>, ArgsError> {
        match (&self.container_id, &self.netns, &self.ifname) {
            (Some(container_id), Some(netns), Some(ifname)) => Ok(AddParams {
                container_id,
                netns,
                ifname,
            }),
            _ => {
                let missing = [
                    ("CNI_CONTAINERID", self.container_id.is_none()),
                    ("CNI_NETNS", self.netns.is_none()),
                    ("CNI_IFNAME", self.ifname.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                Err(ArgsError::Missing(missing))
            }
        }
    }
}

/// An environment lookup over fixed pairs, for [`Invocation::from_env`] in tests.
#[cfg(test)]
pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests;
