//! A `nodetunnel-cni-agent` process in a node namespace, with the host directories it is given
//! (CNI config and bin dirs, run dir, ZDS socket), as the CNI end-to-end tests and the demo
//! run it against the Kubernetes API stand-in ([`crate::kube_api`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cni::{Attachment, CniError, ConfList, Runner};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::NsProcess;

/// Where Debian's `containernetworking-plugins` puts the reference plugins (`ptp`, `bridge`,
/// `host-local`).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The agent's `/healthz` and `/readyz`, on 127.0.0.1 in its node namespace.
pub const HEALTH_PORT: u16 = 18000;
/// The agent's `/metrics`, on 127.0.0.1 in its node namespace (not the chart's 15014: the
/// control-plane stand-in serves its status there).
pub const METRICS_PORT: u16 = 18014;
/// The agent's `RECONCILE_INTERVAL` in tests: short, so a repair is seen within seconds.
pub const RECONCILE_INTERVAL: &str = "1s";
/// The node's primary CNI config file, which the agent inserts itself into.
pub const PRIMARY_CONFLIST: &str = "10-primary.conflist";

/// What to start.
pub struct CniAgentSpec<'a> {
    /// `NODE_NAME`: the agent handles pods with this `spec.nodeName`.
    pub node: &'a str,
    pub agent_bin: &'a Path,
    /// The plugin binary the agent installs (`CNI_PLUGIN_BINARY`).
    pub plugin_bin: &'a Path,
    /// The agent's own API access (`KUBECONFIG`).
    pub kubeconfig: &'a Path,
    /// Written as [`PRIMARY_CONFLIST`] before the agent starts.
    pub primary_conflist: &'a Value,
    /// `LOG_LEVEL`.
    pub log_level: &'a str,
}

/// A running agent. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct CniAgent {
    pub process: NsProcess,
    /// `CNI_AGENT_RUN_DIR`: the event socket and the plugin's kubeconfig.
    pub run_dir: PathBuf,
    /// `MOUNTED_CNI_NET_DIR`.
    pub net_dir: PathBuf,
    /// `HOST_CNI_BIN_DIR`, where it installs the plugin.
    pub bin_dir: PathBuf,
    /// `ZTUNNEL_UDS_ADDRESS`: the agent listens, the node's tunnel connects.
    pub zds: PathBuf,
}

impl CniAgent {
    /// Creates `dir/{run,net.d,bin}`, writes the primary conflist and starts the agent in
    /// `ns`, logging to `dir/agent.log` (truncated: a restarted agent starts a fresh log).
    pub fn start(ns: &Netns, dir: &Path, spec: &CniAgentSpec) -> Result<CniAgent> {
        CniAgent::start_with_env(ns, dir, spec, &[])
    }

    /// [`start`](Self::start) with `extra` added to (or overriding) the agent's environment,
    /// e.g. a `PATH` with a directory of test doubles for its tools in front.
    pub fn start_with_env(
        ns: &Netns,
        dir: &Path,
        spec: &CniAgentSpec,
        extra: &[(&str, &str)],
    ) -> Result<CniAgent> {
        let (run_dir, net_dir, bin_dir) = (dir.join("run"), dir.join("net.d"), dir.join("bin"));
        for d in [&run_dir, &net_dir, &bin_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let conflist = net_dir.join(PRIMARY_CONFLIST);
        std::fs::write(&conflist, spec.primary_conflist.to_string())
            .map_err(|e| Error::io(format!("writing {}", conflist.display()), e))?;
        let zds = dir.join("ztunnel.sock");
        let path = |p: &Path| p.display().to_string();
        let env = [
            ("NODE_NAME", spec.node.to_string()),
            ("POD_NAMESPACE", "istio-system".into()),
            ("KUBECONFIG", path(spec.kubeconfig)),
            ("CNI_AGENT_RUN_DIR", path(&run_dir)),
            ("ZTUNNEL_UDS_ADDRESS", path(&zds)),
            ("MOUNTED_CNI_NET_DIR", path(&net_dir)),
            ("HOST_CNI_BIN_DIR", path(&bin_dir)),
            ("CNI_PLUGIN_BINARY", path(spec.plugin_bin)),
            // The agent shares the test's mount namespace: host paths are its own.
            ("HOST_MOUNTS_PATH", "/".into()),
            ("PROC_ROOT", "/proc".into()),
            ("HEALTH_ADDR", format!("127.0.0.1:{HEALTH_PORT}")),
            ("METRICS_ADDR", format!("127.0.0.1:{METRICS_PORT}")),
            ("RECONCILE_INTERVAL", RECONCILE_INTERVAL.into()),
            // The stand-in serves no DaemonSets: on shutdown, always remove the plugin.
            ("AMBIENT_DISABLE_SAFE_UPGRADE", "true".into()),
            ("LOG_LEVEL", spec.log_level.into()),
        ];
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        let process = NsProcess::spawn(
            "cni agent",
            ns,
            spec.agent_bin,
            &[],
            &env,
            &dir.join("agent.log"),
        )?;
        Ok(CniAgent {
            process,
            run_dir,
            net_dir,
            bin_dir,
            zds,
        })
    }

    /// The primary conflist as it is now (the agent edits it).
    pub fn primary_conflist(&self) -> Result<Value> {
        let file = self.net_dir.join(PRIMARY_CONFLIST);
        let bytes = std::fs::read(&file)
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))
    }

    /// The `type` of each plugin in the primary conflist, in chain order.
    pub fn plugin_types(&self) -> Result<Vec<String>> {
        Ok(self.primary_conflist()?["plugins"]
            .as_array()
            .map(|plugins| {
                plugins
                    .iter()
                    .filter_map(|p| p["type"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// containerd's pod netns directory, which the runtime reports in `CNI_NETNS`.
pub const CONTAINERD_NETNS_DIR: &str = "/var/run/netns";

/// A container runtime's CNI calls on one node: the node's conflist (as the agent rewrote
/// it) run from the node's namespace with the plugins in `/usr/lib/cni` and the bin dir the
/// agent installed ours into.
pub struct NodeRuntime {
    pub ns: Netns,
    pub list: ConfList,
    pub runner: Runner,
}

impl NodeRuntime {
    /// The runtime of `agent`'s node, whose namespace is `ns`, with its conflist as it is now.
    pub fn of(agent_net_dir: &Path, agent_bin_dir: &Path, ns: &Netns) -> Result<NodeRuntime> {
        let file = agent_net_dir.join(PRIMARY_CONFLIST);
        let bytes = std::fs::read(&file)
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
        let list = ConfList::parse(&json)
            .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
        Ok(NodeRuntime {
            ns: ns.clone(),
            list,
            runner: Runner::new(vec![
                PathBuf::from(REFERENCE_PLUGINS),
                agent_bin_dir.to_owned(),
            ]),
        })
    }

    /// `ADD` of pod `namespace/name`'s sandbox `sandbox` (as `eth0`): its attachment (for
    /// the `DEL`) and the chain's result.
    pub fn add(
        &self,
        sandbox: &Netns,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<(Attachment, Value), CniError> {
        let attachment = Attachment {
            container_id: sandbox.name().into(),
            // As containerd names it: its netns dir is /var/run/netns (here /run/netns through
            // the /var/run symlink), the host path Istio's chart mounts into the agent.
            netns: Path::new(CONTAINERD_NETNS_DIR).join(sandbox.name()),
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
        };
        let (runner, list, att) = (self.runner.clone(), self.list.clone(), attachment.clone());
        let result = self.ns.run(move || runner.add(&list, &att))?;
        Ok((attachment, result))
    }

    /// `DEL` of an attachment made by [`add`](Self::add).
    pub fn del(
        &self,
        attachment: &Attachment,
        result: &Value,
    ) -> std::result::Result<(), CniError> {
        let (runner, list) = (self.runner.clone(), self.list.clone());
        let (att, result) = (attachment.clone(), result.clone());
        self.ns.run(move || runner.del(&list, &att, Some(&result)))
    }
}

/// A node's primary CNI config, as a simple routed CNI would write it: `ptp` with host-local
/// handing out the single address .30 of the node's /24 (so a deleted pod's address goes to
/// the next pod at once, as on a busy node), the node's address as gateway.
pub fn primary_conflist(node_ip: Ipv4Addr, ipam_dir: &Path) -> Value {
    let [a, b, c, _] = node_ip.octets();
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [{
            "type": "ptp",
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{
                    "subnet": format!("{a}.{b}.{c}.0/24"),
                    "rangeStart": format!("{a}.{b}.{c}.30"),
                    "rangeEnd": format!("{a}.{b}.{c}.30"),
                    "gateway": node_ip.to_string()
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        }]
    })
}

/// A uid per (topology, pod name), in the UUID shape kubelet puts into cgroup paths. Unique
/// per topology: tests run in parallel on one machine, and an agent scanning `/proc` must not
/// find another run's pod (same name and IP) under its uid.
pub fn pod_uid(topology: &str, name: &str) -> String {
    let key = format!("{topology}/{name}");
    // FNV-1a, folded to the 48 bits of the UUID's last group.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("0000aaaa-0000-4000-8000-{:012x}", hash & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_are_uuid_shaped_and_differ_per_topology_and_name() {
        let a = pod_uid("ntt1-1", "client");
        assert_eq!(a.len(), 36);
        assert_ne!(a, pod_uid("ntt1-1", "client2"));
        assert_ne!(a, pod_uid("ntt1-2", "client"));
        assert_eq!(a, pod_uid("ntt1-1", "client"));
    }
}
