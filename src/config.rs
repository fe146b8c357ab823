//! Daemon configuration from environment variables.
//!
//! Variable names follow Istio's ztunnel wherever the two overlap, so a deployment written for
//! ztunnel keeps working. Each subsystem reads its own variables (`mode`, `xds`, `ca`,
//! `pool`, `listen`) through one typed reader (`env`), and [`Config`] composes them.
//! Every error names the variable, the value and why it was refused; the daemon refuses to
//! start on any of them rather than run half-configured.

mod bounds;
mod ca;
mod check;
mod dns;
mod env;
mod grpc;
mod listen;
mod mode;
mod pool;
mod termination;
#[cfg(test)]
mod tests;
mod workers;
mod xds;

use std::collections::HashMap;
use std::time::Duration;

pub(crate) use bounds::HboneBounds;
pub use bounds::{PingConfig, TcpKeepalive};
pub(crate) use ca::{CaConfig, CaSource};
pub use check::{check_vars, ACCEPTED_UNUSED, PROCESS_VARIABLES};
pub(crate) use dns::{DnsConfig, DNS_PORT};
pub use env::parse_duration;
pub(crate) use listen::{ListenConfig, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
pub(crate) use mode::{InpodConfig, Mode, ProxyWorkloadInfo};
pub(crate) use pool::PoolConfig;
pub(crate) use xds::ConfigSource;

use env::Env;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("no configuration source: set XDS_ADDRESS (a control plane) or LOCAL_XDS_PATH (a YAML file); only in a Kubernetes pod (KUBERNETES_SERVICE_HOST set) is istiod's address the default")]
    NoConfigSource,
    #[error("XDS_ADDRESS and LOCAL_XDS_PATH are both set; choose one")]
    ConflictingConfigSources,
    #[error("no certificate source: set CA_ADDRESS (an Istio-compatible CA), FAKE_CA=true, or LOCAL_CA_DIR=<dir with ca-cert.pem, ca-key.pem, root-cert.pem>; only in a Kubernetes pod (KUBERNETES_SERVICE_HOST set) is istiod's address the default")]
    NoCertificateSource,
    #[error("{0} are set; choose one certificate source")]
    ConflictingCertificateSources(String),
    /// A header variable (`XDS_HEADER_<name>`, `CA_HEADER_<name>`); its value is not shown.
    #[error("{var}: {reason}")]
    InvalidHeader { var: String, reason: String },
    #[error("{var}={path}: the file does not exist")]
    MissingFile { var: &'static str, path: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `PROXY_MODE` with the settings of that mode.
    pub(crate) mode: Mode,
    /// `XDS_ADDRESS` or `LOCAL_XDS_PATH`.
    pub(crate) source: ConfigSource,
    /// Certificate source and lifetime.
    pub(crate) ca: CaConfig,
    /// `ISTIO_META_CLUSTER_ID` (as Istio's ztunnel chart sets it), else `CLUSTER_ID`, else
    /// `Kubernetes`: default cluster of workloads; sent to the control plane and the CA.
    pub(crate) cluster_id: String,
    /// `CLUSTER_DOMAIN`: the cluster's DNS domain.
    pub(crate) cluster_domain: String,
    /// `TRUST_DOMAIN`: trust domain for workloads whose config does not name one.
    pub(crate) trust_domain: String,
    /// `NODE_NAME`: serve the workloads on this node (unset: every workload).
    pub(crate) node_name: Option<String>,
    /// `NETWORK`: the network this tunnel's workloads are on.
    pub(crate) network: String,
    /// `EAST_WEST_GATEWAY` (ours; default false): this tunnel is its network's east-west
    /// gateway receiver. A CONNECT to `hostname:port` on a local workload's 15008 is then not
    /// delivered to that workload but forwarded, unread, to an endpoint's tunnel on this
    /// network (double HBONE's outer layer ends here; see `proxy/gateway.rs`).
    pub(crate) east_west_gateway: bool,
    pub(crate) pool: PoolConfig,
    /// `CONNECTION_TIMEOUT`: dialing an upstream (TCP + TLS + CONNECT) gives up after this.
    pub(crate) connect_timeout: Duration,
    /// Handshake deadline, caps, idle timeout and PINGs of HBONE connections (see `bounds`).
    pub(crate) hbone: HboneBounds,
    /// `KEEPALIVE_*`: TCP keepalive on the data path's sockets (`None`: off).
    pub(crate) keepalive: Option<TcpKeepalive>,
    pub(crate) listen: ListenConfig,
    /// How long live connections may finish after a shutdown signal or their pod's removal:
    /// `CONNECTION_TERMINATION_DEADLINE` (or our `DRAIN_TIMEOUT`), else derived from
    /// `TERMINATION_GRACE_PERIOD_SECONDS` as ztunnel does (see `termination`).
    pub(crate) drain_timeout: Duration,
    /// The data path's runtime threads (xDS and admin have their own), sized from
    /// `ZTUNNEL_WORKER_THREADS` / `WORKER_THREADS` or the CPU limit variables (see `workers`).
    pub worker_threads: usize,
    /// `ENFORCE_POLICY_ON_LIVE_CONNECTIONS` (default true): after every change of the mesh
    /// state, live inbound connections are authorized again and the denied ones closed.
    /// `false`: a change applies to new connections only.
    pub(crate) recheck_live_connections: bool,
    /// The DNS proxy on 15053 (see `dns`).
    pub(crate) dns: DnsConfig,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Config::from_vars(&vars)
    }

    /// Reads the configuration from a map of variables (testable without touching the process env).
    pub(crate) fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_env_reader(&Env::new(vars))
    }

    /// The configuration from `env`, which remembers what was looked up (see `check`).
    fn from_env_reader(env: &Env<'_>) -> Result<Config, ConfigError> {
        refuse_unsupported(env)?;
        let mode = Mode::from_env(env)?;
        // ztunnel's order: the chart sets ISTIO_META_CLUSTER_ID; CLUSTER_ID is ours (and older).
        let cluster_id = env
            .get("ISTIO_META_CLUSTER_ID")
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| env.string_or("CLUSTER_ID", "Kubernetes"));
        let cluster_domain = env.string_or("CLUSTER_DOMAIN", "cluster.local");
        let node_name = env.get("NODE_NAME").map(str::to_string);
        let source =
            ConfigSource::from_env(env, &cluster_id, &cluster_domain, node_name.as_deref())?;
        let ca = CaConfig::from_env(env, &cluster_id)?;
        Ok(Config {
            mode,
            source,
            ca,
            cluster_id,
            cluster_domain,
            trust_domain: env.string_or("TRUST_DOMAIN", "cluster.local"),
            node_name,
            network: env.string_or("NETWORK", ""),
            east_west_gateway: env.bool("EAST_WEST_GATEWAY", false)?,
            pool: PoolConfig::from_env(env)?,
            connect_timeout: env.duration("CONNECTION_TIMEOUT", Duration::from_secs(10))?,
            hbone: HboneBounds::from_env(env)?,
            keepalive: TcpKeepalive::from_env(env)?,
            listen: ListenConfig::from_env(env)?,
            drain_timeout: termination::deadline(env)?,
            worker_threads: workers::worker_threads(env, available_cores)?,
            recheck_live_connections: env.bool("ENFORCE_POLICY_ON_LIVE_CONNECTIONS", true)?,
            dns: DnsConfig::from_env(env)?,
        })
    }
}

/// Settings Istio's chart can turn on that this tunnel does not implement, where running
/// without them would be less safe than not running: fail closed.
fn refuse_unsupported(env: &Env<'_>) -> Result<(), ConfigError> {
    if let Some(path) = env.get("CRL_PATH") {
        return Err(env::invalid(
            "CRL_PATH",
            path,
            "certificate revocation lists are not supported; without them revoked peer certificates would be accepted, so the tunnel does not start (unset it, i.e. the chart's peerCaCrl.enabled=false)",
        ));
    }
    Ok(())
}

/// The cores this process may run on (CPU affinity and cgroup quota), as ztunnel's fallback
/// when the chart's CPU variables are absent.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
