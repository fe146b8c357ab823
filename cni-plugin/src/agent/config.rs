//! The node agent's settings: flags, each also read from the environment variable Istio's
//! `install-cni` uses for it (viper maps `--cni-agent-run-dir` to `CNI_AGENT_RUN_DIR`), so a
//! DaemonSet written for istio-cni configures this agent unchanged where the two overlap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::plugin::config::{DEFAULT_RUN_DIR, KUBECONFIG_NAME};

/// The plugin's binary and conflist `type`.
pub const PLUGIN_TYPE: &str = "nodetunnel-cni";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "nodetunnel-cni-agent",
    about = "CNI node agent: installs the nodetunnel-cni plugin, enrolls ambient pods into the node tunnel"
)]
pub struct AgentConfig {
    /// This node's name: only pods scheduled here (`spec.nodeName`) are handled.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The agent's own namespace; its pods are never enrolled.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub pod_namespace: String,

    /// Shared with the plugin: the event socket and the plugin's kubeconfig live here.
    #[arg(long, env = "CNI_AGENT_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,

    /// Where the tunnel connects for ZDS (the agent listens).
    #[arg(
        long,
        env = "ZTUNNEL_UDS_ADDRESS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub ztunnel_uds_address: PathBuf,

    /// The host's CNI config directory, as mounted into the agent.
    #[arg(
        long,
        env = "MOUNTED_CNI_NET_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub mounted_cni_net_dir: PathBuf,

    /// Insert into this config file instead of the first one by name.
    #[arg(long, env = "CNI_CONF_NAME")]
    pub cni_conf_name: Option<String>,

    /// The host's CNI binary directory, as mounted into the agent.
    #[arg(long, env = "HOST_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub host_cni_bin_dir: PathBuf,

    /// The plugin binary to install (default: `nodetunnel-cni` next to this binary).
    #[arg(long, env = "CNI_PLUGIN_BINARY")]
    pub plugin_binary: Option<PathBuf>,

    /// Namespaces whose pods are never enrolled (comma separated).
    #[arg(
        long,
        env = "EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,

    /// Without ambient the agent only installs the plugin (which then enrolls nothing).
    #[arg(long, env = "AMBIENT_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ambient_enabled: bool,

    /// Redirect pods' DNS (UDP and TCP port 53) to the tunnel's 15053.
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub ambient_dns_capture: bool,

    /// nftables instead of iptables: not supported by this agent; `true` is refused at start.
    #[arg(long, env = "NATIVE_NFTABLES", default_value_t = false, action = clap::ArgAction::Set)]
    pub native_nftables: bool,

    /// The host's /proc (the agent finds running pods' network namespaces under it).
    #[arg(long, env = "PROC_ROOT", default_value = "/host/proc")]
    pub proc_root: PathBuf,

    /// `/healthz` and `/readyz` (Istio's istio-cni readiness port is 8000).
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8000")]
    pub health_addr: SocketAddr,

    /// The agent's DaemonSet (in `POD_NAMESPACE`). On shutdown the plugin is left installed
    /// while it exists and is not being deleted (an upgrade or restart: new pods fail closed
    /// until the next agent is up instead of starting outside the mesh), and removed
    /// otherwise, as Istio does.
    #[arg(long, env = "DAEMONSET_NAME", default_value = "istio-cni-node")]
    pub daemonset_name: String,

    /// Always remove the plugin on shutdown, without looking at the DaemonSet.
    #[arg(long, env = "AMBIENT_DISABLE_SAFE_UPGRADE", default_value_t = false, action = clap::ArgAction::Set)]
    pub ambient_disable_safe_upgrade: bool,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl AgentConfig {
    /// `<run_dir>/istio-cni-kubeconfig`, which the plugin reads.
    pub fn plugin_kubeconfig(&self) -> PathBuf {
        self.run_dir.join(KUBECONFIG_NAME)
    }

    /// `<run_dir>/pluginevent.sock`, where the plugin POSTs its events.
    pub fn event_socket(&self) -> PathBuf {
        crate::event::socket_path(&self.run_dir)
    }
}

#[cfg(test)]
mod tests;
