//! Daemon configuration from environment variables.
//!
//! Variable names follow Istio's ztunnel wherever the two overlap, so a deployment written for
//! ztunnel keeps working. Every error names the variable, the value and why it was refused; the
//! daemon refuses to start on any of them rather than run half-configured.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
    #[error("{var} is set, but {what} is not available in this build yet")]
    Unsupported {
        var: &'static str,
        what: &'static str,
    },
    #[error("no configuration source: set LOCAL_XDS_PATH (a YAML file) or XDS_ADDRESS")]
    NoConfigSource,
    #[error("no certificate source: set FAKE_CA=true or LOCAL_CA_DIR=<dir with ca-cert.pem, ca-key.pem, root-cert.pem>")]
    NoCertificateSource,
    #[error("FAKE_CA=true and LOCAL_CA_DIR are both set; choose one")]
    ConflictingCertificateSources,
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
}

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
    pub local_xds_path: Option<PathBuf>,
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
        if env.get("XDS_ADDRESS").is_some() {
            return Err(ConfigError::Unsupported {
                var: "XDS_ADDRESS",
                what: "the xDS client",
            });
        }
        if env.get("CA_ADDRESS").is_some() {
            return Err(ConfigError::Unsupported {
                var: "CA_ADDRESS",
                what: "the gRPC CA client",
            });
        }
        let local_xds_path = env.get("LOCAL_XDS_PATH").map(PathBuf::from);
        if local_xds_path.is_none() {
            return Err(ConfigError::NoConfigSource);
        }
        let fake_ca = env.bool("FAKE_CA", false)?;
        let ca = match (fake_ca, env.get("LOCAL_CA_DIR")) {
            (true, Some(_)) => return Err(ConfigError::ConflictingCertificateSources),
            (true, None) => CaSource::Fake,
            (false, Some(dir)) => CaSource::LocalDir(PathBuf::from(dir)),
            (false, None) => return Err(ConfigError::NoCertificateSource),
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
            local_xds_path,
            ca,
            cluster_id: env.get("CLUSTER_ID").unwrap_or("Kubernetes").to_string(),
            cluster_domain: env
                .get("CLUSTER_DOMAIN")
                .unwrap_or("cluster.local")
                .to_string(),
            trust_domain: env
                .get("TRUST_DOMAIN")
                .unwrap_or("cluster.local")
                .to_string(),
            node_name: env.get("NODE_NAME").map(str::to_string),
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

/// Typed reads of variables; each error names the variable.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
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
        total += Duration::try_from_secs_f64(value * unit_secs).ok()?;
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
            .unwrap_err(),
            ConfigError::ConflictingCertificateSources
        );
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
    }
}
