//! The node agent's settings: flags, each also read from the environment variable Istio's
//! `install-cni` uses for it (viper maps `--cni-agent-run-dir` to `CNI_AGENT_RUN_DIR`), so a
//! DaemonSet written for istio-cni configures this agent unchanged where the two overlap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::ambient::{
    default_selectors, parse_selectors_yaml, EnablementSelector, EnrollmentRules,
};
use crate::plugin::config::{DEFAULT_RUN_DIR, KUBECONFIG_NAME};

mod values;
use values::{go_bool, go_mem_limit, istio_log_level, reconcile_interval};

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
    #[arg(long, env = "AMBIENT_ENABLED", default_value_t = true, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub ambient_enabled: bool,

    /// Redirect pods' DNS (UDP and TCP port 53) to the tunnel's 15053.
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", default_value_t = false, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub ambient_dns_capture: bool,

    /// Also write the IPv6 rule set (ip6tables in each pod, `istio-inpod-probes-v6` and its
    /// SNAT on the host), as Istio's `ambient.ipv6` (chart default `true`).
    #[arg(long, env = "AMBIENT_IPV6", default_value_t = true, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub ambient_ipv6: bool,

    /// nftables instead of iptables: not supported by this agent; `true` is refused at start.
    #[arg(long, env = "NATIVE_NFTABLES", default_value_t = false, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub native_nftables: bool,

    /// Where the host's filesystem paths the agent needs are mounted (Istio's fixed `/host`:
    /// the chart mounts the host's `/proc` at `/host/proc` and `/var/run/netns` at
    /// `/host/var/run/netns`). A pod netns path the plugin reports (a host path) is opened
    /// under it, as Istio's agent does. `/` for an agent sharing the host's mount namespace.
    #[arg(long, env = "HOST_MOUNTS_PATH", default_value = "/host")]
    pub host_mounts_path: PathBuf,

    /// The host's /proc (the agent finds running pods' network namespaces under it, and the
    /// host's netns as pid 1's). Default: `<HOST_MOUNTS_PATH>/proc`.
    #[arg(long, env = "PROC_ROOT")]
    pub proc_root: Option<PathBuf>,

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
    #[arg(long, env = "AMBIENT_DISABLE_SAFE_UPGRADE", default_value_t = false, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub ambient_disable_safe_upgrade: bool,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Istio's log flag (the chart passes `--log_output_level=info`): `<level>` or
    /// `<scope>:<level>,...` with Istio's levels; overrides `LOG_LEVEL`.
    #[arg(long = "log_output_level", value_parser = istio_log_level)]
    pub log_output_level: Option<String>,

    /// Istio's JSON log flag: accepted, logs stay plain text (start-up note).
    #[arg(long = "log_as_json")]
    pub log_as_json: bool,

    /// Istio's `AMBIENT_ENABLEMENT_SELECTOR`: the chart's `ambient.enablementSelectors` as YAML.
    /// Unset or blank means the chart's default selectors; `[]` selects nothing.
    #[arg(long, env = "AMBIENT_ENABLEMENT_SELECTOR")]
    pub ambient_enablement_selector: Option<String>,

    /// `true` (the chart sets it unless the pod shares the host network): host-side rules are
    /// programmed from the host's network namespace, entered through `<PROC_ROOT>/1/ns/net`.
    /// `false`: in the agent's own network namespace (a pod with `hostNetwork: true`).
    #[arg(long, env = "ALLOW_SWITCH_TO_HOST_NS", default_value_t = false, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub allow_switch_to_host_ns: bool,

    /// How often every enrolled pod is checked (in-pod rules complete, served by the current
    /// tunnel, netns still the pod's) and repaired or failed closed; passes also run on tunnel
    /// connects and disconnects. `5s`, `500ms`; 100 ms to 1 h.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "5s", value_parser = reconcile_interval)]
    pub reconcile_interval: std::time::Duration,

    /// Metrics (`/metrics`, Prometheus text), on the chart's `metrics` port.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,

    /// Istio's `MONITORING_PORT`: the metrics port on all addresses; when set, it replaces the
    /// port of `METRICS_ADDR`. Istio serves no metrics for `0` or below; here `0` is refused.
    #[arg(long, env = "MONITORING_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub monitoring_port: Option<u16>,

    /// This pod's name (the chart's fieldRef); only logged.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Istio's `false` writes a standalone conflist: not supported (refused at start).
    #[arg(long, env = "CHAINED_CNI_PLUGIN", default_value_t = true, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub chained_cni_plugin: bool,

    /// Istio's own-config-file mode: not supported; `true` is refused at start.
    #[arg(long, env = "ISTIO_OWNED_CNI_CONFIG", default_value_t = false, action = clap::ArgAction::Set, value_parser = go_bool)]
    pub istio_owned_cni_config: bool,

    #[command(flatten)]
    pub noted: Noted,

    /// Check the settings as start-up does, print what the agent would serve (addresses,
    /// sockets, the variables read and ignored) as JSON on stdout and exit; exit 1 with the
    /// error start-up would stop with. Touches nothing on the host or the API server.
    #[arg(long)]
    pub check_config: bool,
}

/// Settings the chart passes that this agent accepts, checks, and does not act on; each one
/// set gives one start-up note (see [`Noted::notes`]).
#[derive(Debug, Clone, clap::Args)]
pub struct Noted {
    #[arg(long, env = "CURRENT_AGENT_VERSION")]
    pub current_agent_version: Option<String>,
    #[arg(long, env = "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP", value_parser = go_bool)]
    pub ambient_reconcile_pod_rules_on_startup: Option<bool>,
    #[arg(long, env = "ENABLE_AMBIENT_DETECTION_RETRY", value_parser = go_bool)]
    pub enable_ambient_detection_retry: Option<bool>,
    #[arg(long, env = "ISTIO_OWNED_CNI_CONF_FILENAME")]
    pub istio_owned_cni_conf_filename: Option<String>,
    #[arg(long, env = "REPAIR_ENABLED", value_parser = go_bool)]
    pub repair_enabled: Option<bool>,
    #[arg(long, env = "REPAIR_LABEL_PODS", value_parser = go_bool)]
    pub repair_label_pods: Option<bool>,
    #[arg(long, env = "REPAIR_DELETE_PODS", value_parser = go_bool)]
    pub repair_delete_pods: Option<bool>,
    #[arg(long, env = "REPAIR_REPAIR_PODS", value_parser = go_bool)]
    pub repair_repair_pods: Option<bool>,
    #[arg(long, env = "REPAIR_RUN_AS_DAEMON", value_parser = go_bool)]
    pub repair_run_as_daemon: Option<bool>,
    #[arg(long, env = "REPAIR_INIT_CONTAINER_NAME")]
    pub repair_init_container_name: Option<String>,
    #[arg(long, env = "REPAIR_BROKEN_POD_LABEL_KEY")]
    pub repair_broken_pod_label_key: Option<String>,
    #[arg(long, env = "REPAIR_BROKEN_POD_LABEL_VALUE")]
    pub repair_broken_pod_label_value: Option<String>,
    #[arg(long, env = "REPAIR_SIDECAR_ANNOTATION")]
    pub repair_sidecar_annotation: Option<String>,
    #[arg(long, env = "REPAIR_NODE_NAME")]
    pub repair_node_name: Option<String>,
    #[arg(long, env = "GOMEMLIMIT", value_parser = go_mem_limit)]
    pub gomemlimit: Option<u64>,
}

impl Noted {
    /// One line per setting given: what it means to Istio and why it changes nothing here.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut note = |set: bool, name: &str, why: &str| {
            if set {
                notes.push(format!("{name}: accepted, not implemented: {why}"));
            }
        };
        note(
            self.current_agent_version.is_some(),
            "CURRENT_AGENT_VERSION",
            "informational only",
        );
        note(
            self.ambient_reconcile_pod_rules_on_startup.is_some(),
            "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP",
            "pods found enrolled at start keep their rules; the tunnel re-learns them over ZDS",
        );
        note(
            self.enable_ambient_detection_retry.is_some(),
            "ENABLE_AMBIENT_DETECTION_RETRY",
            "pods not yet enrollable are always retried",
        );
        note(
            self.istio_owned_cni_conf_filename.is_some(),
            "ISTIO_OWNED_CNI_CONF_FILENAME",
            "the plugin is chained into the existing conflist",
        );
        let repair = [
            self.repair_enabled.is_some(),
            self.repair_label_pods.is_some(),
            self.repair_delete_pods.is_some(),
            self.repair_repair_pods.is_some(),
            self.repair_run_as_daemon.is_some(),
            self.repair_init_container_name.is_some(),
            self.repair_broken_pod_label_key.is_some(),
            self.repair_broken_pod_label_value.is_some(),
            self.repair_sidecar_annotation.is_some(),
            self.repair_node_name.is_some(),
        ];
        note(
            repair.iter().any(|set| *set),
            "REPAIR_*",
            "sidecar pod repair; this agent serves ambient pods only",
        );
        note(
            self.gomemlimit.is_some(),
            "GOMEMLIMIT",
            "a Go runtime setting",
        );
        notes
    }
}

/// A setting whose value parses but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AMBIENT_ENABLEMENT_SELECTOR={value:?}: {source}")]
    Selector {
        value: String,
        #[source]
        source: crate::ambient::SelectorError,
    },
    #[error(
        "CHAINED_CNI_PLUGIN=false: this agent only chains into the existing conflist; unset it"
    )]
    Standalone,
    #[error(
        "ISTIO_OWNED_CNI_CONFIG=true: this agent only chains into the existing conflist; unset it"
    )]
    OwnedConfig,
}

impl AgentConfig {
    /// The effective log filter: `--log_output_level` when given, else `LOG_LEVEL`.
    pub fn log_filter(&self) -> &str {
        self.log_output_level.as_deref().unwrap_or(&self.log_level)
    }

    /// The enablement selectors, decoded and validated. Unset or blank: the chart's defaults
    /// (Istio's agent enrolls nothing then; its chart always sets the variable, to these
    /// selectors unless changed). An empty list (`[]`, or `null`, as the chart renders an
    /// empty or null `ambient.enablementSelectors`) enrolls nothing, as in Istio.
    pub fn enablement_selectors(&self) -> Result<Vec<EnablementSelector>, ConfigError> {
        let Some(value) = self
            .ambient_enablement_selector
            .as_ref()
            .filter(|v| !v.trim().is_empty())
        else {
            return Ok(default_selectors());
        };
        let selector = |source| ConfigError::Selector {
            value: value.clone(),
            source,
        };
        let selectors = parse_selectors_yaml(value).map_err(selector)?;
        // Compiling checks operators, keys and values now, not at the first pod.
        EnrollmentRules::new(Vec::new(), String::new(), &selectors).map_err(selector)?;
        Ok(selectors)
    }

    /// Refuses settings asking for what this agent does not do.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.chained_cni_plugin {
            return Err(ConfigError::Standalone);
        }
        if self.istio_owned_cni_config {
            return Err(ConfigError::OwnedConfig);
        }
        self.enablement_selectors().map(|_| ())
    }

    /// Start-up notes for settings accepted without effect.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.noted.notes();
        if self.log_as_json {
            notes.push("--log_as_json: accepted, not implemented: logs are plain text".into());
        }
        notes
    }

    /// The host network namespace to program host rules from; `None`: the agent's own.
    pub fn host_netns(&self) -> Option<PathBuf> {
        self.allow_switch_to_host_ns
            .then(|| self.proc_root().join("1/ns/net"))
    }

    /// The host's /proc: `PROC_ROOT`, else `<HOST_MOUNTS_PATH>/proc`.
    pub fn proc_root(&self) -> PathBuf {
        self.proc_root
            .clone()
            .unwrap_or_else(|| self.host_mounts_path.join("proc"))
    }

    /// Where `/metrics` is served: `METRICS_ADDR`, its port replaced by `MONITORING_PORT`.
    pub fn metrics_addr(&self) -> SocketAddr {
        let mut addr = self.metrics_addr;
        if let Some(port) = self.monitoring_port {
            addr.set_port(port);
        }
        addr
    }

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
