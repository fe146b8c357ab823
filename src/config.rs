//! Daemon configuration from environment variables.
//!
//! Variable names follow Istio's ztunnel wherever the two overlap, so a deployment written for
//! ztunnel keeps working. Every error names the variable, the value and why it was refused; the
//! daemon refuses to start on any of them rather than run half-configured.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::grpc::GrpcTarget;
use crate::xds::{NodeInfo, XdsConfig};

/// Ports inside the tunnel's (or the pod's) network namespace, fixed by the ambient contract.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;
pub const ADMIN_PORT: u16 = 15000;
pub const METRICS_PORT: u16 = 15020;
pub const READINESS_PORT: u16 = 15021;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("no configuration source: set XDS_ADDRESS (a control plane) or LOCAL_XDS_PATH (a YAML file)")]
    NoConfigSource,
    #[error("XDS_ADDRESS and LOCAL_XDS_PATH are both set; choose one")]
    ConflictingConfigSources,
    #[error("no certificate source: set CA_ADDRESS (an Istio-compatible CA), FAKE_CA=true, or LOCAL_CA_DIR=<dir with ca-cert.pem, ca-key.pem, root-cert.pem>")]
    NoCertificateSource,
    #[error("{0} are set; choose one certificate source")]
    ConflictingCertificateSources(String),
    #[error("{var}={path}: the file does not exist")]
    MissingFile { var: &'static str, path: String },
}

/// How the tunnel runs: `dedicated` serves workloads in its own network namespace;
/// `shared` (in-pod) receives pod network namespaces from the CNI agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Dedicated,
    Shared,
}

/// Where workload certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A throwaway root generated at start (`FAKE_CA=true`).
    Fake,
    /// A CA loaded from Istio's plug-in CA file names in a directory (`LOCAL_CA_DIR`).
    LocalDir(PathBuf),
    /// An Istio-compatible CA over gRPC (`CA_ADDRESS`, `CA_ROOT_CA`, `CA_AUTH_TOKEN`).
    Remote(GrpcTarget),
}

/// Where workloads, services and policies come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `LOCAL_XDS_PATH`: a YAML file read once at start.
    File(PathBuf),
    /// `XDS_ADDRESS`: a control plane over delta xDS.
    Xds(Box<XdsConfig>),
}

/// Istio's defaults: the mounted istiod root and the projected service-account token.
pub const DEFAULT_ROOT_CA: &str = "/var/run/secrets/istio/root-cert.pem";
pub const DEFAULT_AUTH_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

/// `PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>`: in dedicated mode, restricts the
/// tunnel to the one workload it fronts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyWorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// HBONE connection pool limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// `POOL_MAX_STREAMS_PER_CONNECTION`: CONNECT streams one mTLS connection carries before
    /// the pool opens another.
    pub max_streams_per_connection: usize,
    /// `POOL_UNUSED_RELEASE_TIMEOUT`: a connection with no streams for this long is closed.
    pub idle_timeout: Duration,
}

/// Shared (in-pod) mode settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InpodConfig {
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
pub const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub proxy_mode: ProxyMode,
    /// Set exactly when `proxy_mode` is `Shared`.
    pub inpod: Option<InpodConfig>,
    pub source: ConfigSource,
    pub ca: CaSource,
    pub cluster_id: String,
    pub cluster_domain: String,
    /// Trust domain for workloads whose config does not name one.
    pub trust_domain: String,
    pub node_name: Option<String>,
    pub network: String,
    pub proxy_workload_info: Option<ProxyWorkloadInfo>,
    /// `SECRET_TTL`: lifetime of issued workload certificates.
    pub secret_ttl: Duration,
    pub pool: PoolConfig,
    /// `CONNECTION_TIMEOUT`: dialing an upstream (TCP + TLS + CONNECT) gives up after this.
    pub connect_timeout: Duration,
    /// Address the outbound/inbound listeners bind: `[::]` (dual stack) unless `IPV6_ENABLED=false`.
    pub bind_ip: IpAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    /// `DRAIN_TIMEOUT` (`TERMINATION_GRACE_PERIOD_SECONDS` in ztunnel): how long live connections
    /// may finish after a shutdown signal.
    pub drain_timeout: Duration,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Config::from_vars(&vars)
    }

    /// Reads the configuration from a map of variables (testable without touching the process env).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let env = Env(vars);
        let proxy_mode = match env.get("PROXY_MODE").unwrap_or("dedicated") {
            "dedicated" => ProxyMode::Dedicated,
            "shared" => ProxyMode::Shared,
            other => {
                return Err(invalid(
                    "PROXY_MODE",
                    other,
                    "expected \"dedicated\" or \"shared\"",
                ))
            }
        };
        let cluster_id = env.get("CLUSTER_ID").unwrap_or("Kubernetes").to_string();
        let cluster_domain = env
            .get("CLUSTER_DOMAIN")
            .unwrap_or("cluster.local")
            .to_string();
        let node_name = env.get("NODE_NAME").map(str::to_string);
        let source = match (env.get("XDS_ADDRESS"), env.get("LOCAL_XDS_PATH")) {
            (Some(_), Some(_)) => return Err(ConfigError::ConflictingConfigSources),
            (None, None) => return Err(ConfigError::NoConfigSource),
            (None, Some(path)) => ConfigSource::File(PathBuf::from(path)),
            (Some(address), None) => ConfigSource::Xds(Box::new(XdsConfig {
                target: env.grpc_target(
                    "XDS_ADDRESS",
                    address,
                    "XDS_ROOT_CA",
                    "XDS_AUTH_TOKEN",
                    &cluster_id,
                )?,
                node: NodeInfo {
                    pod_name: env
                        .get("POD_NAME")
                        .map(str::to_string)
                        .unwrap_or_else(hostname),
                    pod_namespace: env
                        .get("POD_NAMESPACE")
                        .unwrap_or("istio-system")
                        .to_string(),
                    instance_ip: env.get("INSTANCE_IP").unwrap_or("127.0.0.1").to_string(),
                    node_name: node_name.clone().unwrap_or_default(),
                    cluster_id: cluster_id.clone(),
                    cluster_domain: cluster_domain.clone(),
                    extra_metadata: istio_meta(vars),
                },
            })),
        };
        let fake_ca = env.bool("FAKE_CA", false)?;
        let ca = match (fake_ca, env.get("LOCAL_CA_DIR"), env.get("CA_ADDRESS")) {
            (false, None, Some(address)) => CaSource::Remote(env.grpc_target(
                "CA_ADDRESS",
                address,
                "CA_ROOT_CA",
                "CA_AUTH_TOKEN",
                &cluster_id,
            )?),
            (true, None, None) => CaSource::Fake,
            (false, Some(dir), None) => CaSource::LocalDir(PathBuf::from(dir)),
            (false, None, None) => return Err(ConfigError::NoCertificateSource),
            (fake, dir, address) => {
                let set: Vec<&str> = [
                    ("FAKE_CA=true", fake),
                    ("LOCAL_CA_DIR", dir.is_some()),
                    ("CA_ADDRESS", address.is_some()),
                ]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| *name)
                .collect();
                return Err(ConfigError::ConflictingCertificateSources(
                    set.join(" and "),
                ));
            }
        };
        let proxy_workload_info = env
            .get("PROXY_WORKLOAD_INFO")
            .map(parse_workload_info)
            .transpose()?;
        let inpod = match proxy_mode {
            ProxyMode::Dedicated => None,
            ProxyMode::Shared => {
                if let Some(info) = env.get("PROXY_WORKLOAD_INFO") {
                    return Err(invalid(
                        "PROXY_WORKLOAD_INFO",
                        info,
                        "only meaningful with PROXY_MODE=dedicated; in shared mode each pod's identity comes from the node agent",
                    ));
                }
                Some(InpodConfig::from_env(&env)?)
            }
        };
        let ipv6 = env.bool("IPV6_ENABLED", true)?;
        let bind_ip: IpAddr = if ipv6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            [0, 0, 0, 0].into()
        };
        let max_streams = env.number("POOL_MAX_STREAMS_PER_CONNECTION", 100)?;
        if max_streams == 0 {
            return Err(invalid(
                "POOL_MAX_STREAMS_PER_CONNECTION",
                "0",
                "must be at least 1",
            ));
        }
        Ok(Config {
            proxy_mode,
            inpod,
            source,
            ca,
            cluster_id,
            cluster_domain,
            trust_domain: env
                .get("TRUST_DOMAIN")
                .unwrap_or("cluster.local")
                .to_string(),
            node_name,
            network: env.get("NETWORK").unwrap_or("").to_string(),
            proxy_workload_info,
            secret_ttl: env.duration("SECRET_TTL", Duration::from_secs(24 * 3600))?,
            pool: PoolConfig {
                max_streams_per_connection: max_streams as usize,
                idle_timeout: env
                    .duration("POOL_UNUSED_RELEASE_TIMEOUT", Duration::from_secs(300))?,
            },
            connect_timeout: env.duration("CONNECTION_TIMEOUT", Duration::from_secs(10))?,
            bind_ip,
            admin_addr: env.socket_addr("ADMIN_ADDR", ([127, 0, 0, 1], ADMIN_PORT).into())?,
            metrics_addr: env.socket_addr("STATS_ADDR", (bind_ip, METRICS_PORT).into())?,
            readiness_addr: env.socket_addr("READINESS_ADDR", (bind_ip, READINESS_PORT).into())?,
            drain_timeout: env.duration("DRAIN_TIMEOUT", Duration::from_secs(5))?,
        })
    }
}

fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_workload_info(value: &str) -> Result<ProxyWorkloadInfo, ConfigError> {
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

/// `ISTIO_META_<KEY>=<value>` variables as node metadata `<KEY>: <value>`, as Istio's proxies
/// forward them (operators pass flags to istiod this way).
fn istio_meta(vars: &HashMap<String, String>) -> std::collections::BTreeMap<String, String> {
    vars.iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("ISTIO_META_")?;
            (!key.is_empty()).then(|| (key.to_string(), v.clone()))
        })
        .collect()
}

/// The machine's host name (a pod's name in Kubernetes), for `POD_NAME`'s default.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "nodetunnel".to_string())
}

/// Typed reads of variables; each error names the variable.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    /// A gRPC service: `<addr_var>` (scheme optional, `https://` assumed as ztunnel does),
    /// its TLS root `<root_var>` (a file, or `SYSTEM` for the system roots; Istio's mounted
    /// root by default) and bearer token `<token_var>` (Istio's projected token by default,
    /// used only if present; an explicitly named file must exist).
    fn grpc_target(
        &self,
        addr_var: &'static str,
        address: &str,
        root_var: &'static str,
        token_var: &'static str,
        cluster_id: &str,
    ) -> Result<GrpcTarget, ConfigError> {
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("https://{address}")
        };
        match address.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("https" | "http"))
                    && uri.host().is_some()
                    && uri.port().is_some() => {}
            _ => {
                return Err(invalid(
                    addr_var,
                    &address,
                    "expected https://<host>:<port>, e.g. https://istiod.istio-system.svc:15012",
                ))
            }
        }
        let root_cert = match self.get(root_var) {
            Some("SYSTEM") => None,
            Some(path) => Some(self.existing_file(root_var, path)?),
            None => Some(PathBuf::from(DEFAULT_ROOT_CA)),
        };
        let token = match self.get(token_var) {
            Some(path) => Some(self.existing_file(token_var, path)?),
            None => Some(PathBuf::from(DEFAULT_AUTH_TOKEN)).filter(|p| p.exists()),
        };
        Ok(GrpcTarget {
            address,
            root_cert,
            token,
            cluster_id: cluster_id.to_string(),
        })
    }

    fn existing_file(&self, var: &'static str, path: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(path);
        if path.exists() {
            Ok(path)
        } else {
            Err(ConfigError::MissingFile {
                var,
                path: path.display().to_string(),
            })
        }
    }

    fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(var, v, "expected true or false")),
            },
        }
    }

    fn number(&self, var: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(var, v, "expected a non-negative whole number")),
        }
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                invalid(var, v, "expected a duration such as 30s, 5m, 24h or 500ms")
            }),
        }
    }

    fn socket_addr(
        &self,
        var: &'static str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(var, v, "expected <ip>:<port>, e.g. 127.0.0.1:15000")),
        }
    }
}

/// Parses Go-style durations as Istio writes them: `500ms`, `30s`, `5m`, `24h`, `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Checked: `1e19s1e19s` would overflow `+=`, which panics.
        total = total.checked_add(Duration::try_from_secs_f64(value * unit_secs).ok()?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_ztunnel() {
        let cfg = Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")]))
            .unwrap();
        assert_eq!(cfg.proxy_mode, ProxyMode::Dedicated);
        assert_eq!(cfg.ca, CaSource::Fake);
        assert_eq!(cfg.cluster_id, "Kubernetes");
        assert_eq!(cfg.cluster_domain, "cluster.local");
        assert_eq!(cfg.pool.max_streams_per_connection, 100);
        assert_eq!(cfg.secret_ttl, Duration::from_secs(86400));
        assert_eq!(cfg.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(cfg.readiness_addr.port(), 15021);
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("FAKE_CA", "maybe"),
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "FAKE_CA=\"maybe\": expected true or false");
        let err = Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("FAKE_CA", "true"),
            ("SECRET_TTL", "ten minutes"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("SECRET_TTL=\"ten minutes\""),
            "{err}"
        );
        let err = Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("FAKE_CA", "true"),
            ("PROXY_WORKLOAD_INFO", "default/only-two"),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("PROXY_WORKLOAD_INFO="), "{err}");
    }

    #[test]
    fn refuses_to_run_without_sources() {
        assert_eq!(
            Config::from_vars(&vars(&[("FAKE_CA", "true")])).unwrap_err(),
            ConfigError::NoConfigSource
        );
        assert_eq!(
            Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x")])).unwrap_err(),
            ConfigError::NoCertificateSource
        );
        assert_eq!(
            Config::from_vars(&vars(&[
                ("LOCAL_XDS_PATH", "/x"),
                ("FAKE_CA", "true"),
                ("LOCAL_CA_DIR", "/ca")
            ]))
            .unwrap_err()
            .to_string(),
            "FAKE_CA=true and LOCAL_CA_DIR are set; choose one certificate source"
        );
        assert_eq!(
            Config::from_vars(&vars(&[
                ("LOCAL_XDS_PATH", "/x"),
                ("XDS_ADDRESS", "https://cp:15012"),
                ("FAKE_CA", "true"),
            ]))
            .unwrap_err(),
            ConfigError::ConflictingConfigSources
        );
    }

    #[test]
    fn control_plane_settings_use_istio_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root-cert.pem");
        let token = dir.path().join("token");
        std::fs::write(&root, "pem").unwrap();
        std::fs::write(&token, "t").unwrap();
        let (root_s, token_s) = (root.to_str().unwrap(), token.to_str().unwrap());
        let cfg = Config::from_vars(&vars(&[
            ("XDS_ADDRESS", "10.0.0.1:15012"),
            ("XDS_ROOT_CA", root_s),
            ("XDS_AUTH_TOKEN", token_s),
            ("CA_ADDRESS", "https://ca.example:15012"),
            ("CA_ROOT_CA", "SYSTEM"),
            ("CLUSTER_ID", "c1"),
            ("POD_NAME", "ztunnel-abc"),
            ("POD_NAMESPACE", "istio-system"),
            ("INSTANCE_IP", "10.0.0.7"),
            ("NODE_NAME", "node-1"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
        ]))
        .unwrap();
        let ConfigSource::Xds(xds) = &cfg.source else {
            panic!("expected xDS, got {:?}", cfg.source);
        };
        assert_eq!(xds.target.address, "https://10.0.0.1:15012");
        assert_eq!(xds.target.root_cert.as_deref(), Some(root.as_path()));
        assert_eq!(xds.target.token.as_deref(), Some(token.as_path()));
        assert_eq!(xds.target.cluster_id, "c1");
        assert_eq!(
            xds.node.node_id(),
            "ztunnel~10.0.0.7~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(xds.node.node_name, "node-1");
        assert_eq!(
            xds.node
                .extra_metadata
                .get("DNS_CAPTURE")
                .map(String::as_str),
            Some("true")
        );
        let CaSource::Remote(ca) = &cfg.ca else {
            panic!("expected a remote CA, got {:?}", cfg.ca);
        };
        assert_eq!(ca.address, "https://ca.example:15012");
        assert_eq!(ca.root_cert, None, "SYSTEM means the system roots");

        let err = Config::from_vars(&vars(&[
            ("XDS_ADDRESS", "https://cp:15012"),
            ("XDS_AUTH_TOKEN", "/nonexistent/token"),
            ("FAKE_CA", "true"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "XDS_AUTH_TOKEN=/nonexistent/token: the file does not exist"
        );
        let err = Config::from_vars(&vars(&[("XDS_ADDRESS", "https://cp"), ("FAKE_CA", "true")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("XDS_ADDRESS="), "{err}");
        let err = Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x"),
            ("CA_ADDRESS", "https://cp:15012"),
            ("LOCAL_CA_DIR", "/ca"),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::ConflictingCertificateSources(_)));
    }

    #[test]
    fn parses_workload_info() {
        let cfg = Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("LOCAL_CA_DIR", "/ca"),
            ("PROXY_WORKLOAD_INFO", "default/client/sleep"),
        ]))
        .unwrap();
        assert_eq!(
            cfg.proxy_workload_info,
            Some(ProxyWorkloadInfo {
                namespace: "default".into(),
                name: "client".into(),
                service_account: "sleep".into()
            })
        );
    }

    #[test]
    fn shared_mode_reads_the_inpod_settings() {
        let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
        let cfg = Config::from_vars(&vars(&[base[0], base[1], ("PROXY_MODE", "shared")])).unwrap();
        assert_eq!(cfg.proxy_mode, ProxyMode::Shared);
        let inpod = cfg.inpod.unwrap();
        assert_eq!(inpod.uds, PathBuf::from(DEFAULT_INPOD_UDS));
        assert_eq!(inpod.mark, 0x539);
        assert!(inpod.port_reuse);

        let cfg = Config::from_vars(&vars(&[
            base[0],
            base[1],
            ("PROXY_MODE", "shared"),
            ("INPOD_UDS", "/run/agent.sock"),
            ("PACKET_MARK", "4242"),
            ("INPOD_PORT_REUSE", "false"),
        ]))
        .unwrap();
        let inpod = cfg.inpod.unwrap();
        assert_eq!(inpod.uds, PathBuf::from("/run/agent.sock"));
        assert_eq!(inpod.mark, 4242);
        assert!(!inpod.port_reuse);

        let dedicated = Config::from_vars(&vars(&base)).unwrap();
        assert_eq!(dedicated.inpod, None);
    }

    #[test]
    fn shared_mode_rejects_what_does_not_fit() {
        let base = [
            ("LOCAL_XDS_PATH", "/x.yaml"),
            ("FAKE_CA", "true"),
            ("PROXY_MODE", "shared"),
        ];
        let err = Config::from_vars(&vars(&[base[0], base[1], base[2], ("PACKET_MARK", "0")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("PACKET_MARK=\"0\""), "{err}");
        let err = Config::from_vars(&vars(&[
            base[0],
            base[1],
            base[2],
            ("INPOD_MARK", "99999999999"),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("INPOD_MARK="), "{err}");
        let err = Config::from_vars(&vars(&[
            base[0],
            base[1],
            base[2],
            ("PROXY_WORKLOAD_INFO", "default/client/sleep"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("PROXY_MODE=dedicated"), "{err}");
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            parse_duration("18000000000000000000s18000000000000000000s"),
            None,
            "overflow is an error, not a panic"
        );
    }
}
