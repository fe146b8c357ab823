//! `LOCAL_XDS_PATH`: the mesh described in a YAML file, in the shape Istio's ztunnel accepts
//! (top-level `workloads`, `services`, `policies`; camelCase field names of the proto messages).
//!
//! Parsing is all-or-nothing: the whole file is validated into a fresh `Store` before anything
//! is applied, so a bad file never leaves the tunnel half-configured. Syntax and type errors
//! carry the file, line and field; a field ztunnel accepts but nodetunnel does not act on yet
//! produces a warning naming it, so nothing in the file is silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use serde::de::{self, Deserializer};
use serde::Deserialize;

mod policies;

use policies::LocalPolicy;

use super::addresses::{unusable_address, unusable_range};
use super::defaults::{parse_workload_type, Defaults};
use super::store::Store;
use super::types::{GatewayAddress, GatewayDestination, DEFAULT_GATEWAY_HBONE_PORT};
use super::types::{
    HealthStatus, InboundProtocol, IpFamily, NamespacedHostname, NetworkAddress, NetworkCidr,
    Service, Workload,
};
use super::types::{LbHealthPolicy, LbMode, LbScope, LoadBalancing, Locality, DEFAULT_CAPACITY};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Unlocated { path: PathBuf, message: String },
    #[error("{path}: {item}: {message}")]
    Invalid {
        path: PathBuf,
        item: String,
        message: String,
    },
}

/// A successfully loaded file: the store to install and the warnings to log.
#[derive(Debug)]
pub struct Loaded {
    pub store: Store,
    pub warnings: Vec<String>,
}

pub(crate) fn load_file(path: &Path, defaults: &Defaults) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path, defaults)
}

pub fn load_str(text: &str, path: &Path, defaults: &Defaults) -> Result<Loaded, LoadError> {
    let file: LocalConfig = if text.trim().is_empty() {
        LocalConfig::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
            Some(loc) => LoadError::Syntax {
                path: path.to_path_buf(),
                line: loc.line(),
                column: loc.column(),
                message: strip_location(&e.to_string()),
            },
            None => LoadError::Unlocated {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })?
    };
    file.into_store(path, defaults)
}

/// serde_yaml appends " at line L column C"; the error already carries them as fields.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<LocalWorkload>,
    #[serde(default)]
    services: Vec<LocalService>,
    #[serde(default)]
    policies: Vec<LocalPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalWorkload {
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    services: HashMap<NamespacedHostname, HashMap<u16, u16>>,
    /// Keys (`namespace/name`) of the workload-selector policies that select it.
    #[serde(default)]
    authorization_policies: Vec<String>,
    /// ztunnel's local format: `waypoint: {destination: "<network>/<ip>" or
    /// "<namespace>/<hostname>", hboneMtlsPort: 15008}`.
    waypoint: Option<LocalGateway>,
    /// The east-west gateway clients on other networks reach it through, in the same shape
    /// as `waypoint`.
    network_gateway: Option<LocalGateway>,
    /// `HostNetwork` (or istiod's `HOST_NETWORK`) for a host-network pod; `Standard` by default.
    #[serde(default)]
    network_mode: String,
    native_tunnel: Option<serde_yaml_ng::Value>,
    application_tunnel: Option<serde_yaml_ng::Value>,
    /// ztunnel's local format: `locality: {region, zone, subzone}`, `capacity` (unset = 1).
    #[serde(default)]
    locality: LocalLocality,
    capacity: Option<u32>,
}

/// A waypoint reference in ztunnel's local shape; the port defaults to 15008.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalGateway {
    destination: String,
    hbone_mtls_port: Option<u16>,
}

impl LocalGateway {
    /// The reference, or what is wrong with it (for the loader to name the item).
    fn into_gateway(self) -> Result<GatewayAddress, String> {
        self.into_gateway_at("waypoint")
    }

    /// [`into_gateway`](Self::into_gateway) for the field called `field`.
    fn into_gateway_at(self, field: &str) -> Result<GatewayAddress, String> {
        let destination: GatewayDestination = self
            .destination
            .parse()
            .map_err(|e| format!("`{field}.destination`: {e}"))?;
        if let GatewayDestination::Address(a) = &destination {
            if let Some(reason) = unusable_address(a.address) {
                return Err(format!("`{field}.destination` {}: {reason}", a.address));
            }
        }
        let hbone_mtls_port = match self.hbone_mtls_port {
            None => DEFAULT_GATEWAY_HBONE_PORT,
            Some(0) => return Err(format!("`{field}.hboneMtlsPort` must not be 0")),
            Some(p) => p,
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

/// ztunnel's local `loadBalancer`: `{routingPreferences: [Region, Zone, ...], mode: Standard |
/// Strict | Failover | Passthrough, healthPolicy: OnlyHealthy | AllowAll}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalLoadBalancer {
    #[serde(default)]
    routing_preferences: Vec<LocalScope>,
    mode: LocalLbMode,
    #[serde(default)]
    health_policy: LocalHealthPolicy,
}

#[derive(Debug, Deserialize)]
enum LocalScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Debug, Deserialize)]
enum LocalLbMode {
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Debug, Default, Deserialize)]
enum LocalHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

impl From<LocalLoadBalancer> for LoadBalancing {
    fn from(lb: LocalLoadBalancer) -> LoadBalancing {
        LoadBalancing {
            routing_preference: lb
                .routing_preferences
                .into_iter()
                .map(|s| match s {
                    LocalScope::Region => LbScope::Region,
                    LocalScope::Zone => LbScope::Zone,
                    LocalScope::Subzone => LbScope::Subzone,
                    LocalScope::Node => LbScope::Node,
                    LocalScope::Cluster => LbScope::Cluster,
                    LocalScope::Network => LbScope::Network,
                })
                .collect(),
            mode: match lb.mode {
                LocalLbMode::Standard => LbMode::Standard,
                LocalLbMode::Strict => LbMode::Strict,
                LocalLbMode::Failover => LbMode::Failover,
                LocalLbMode::Passthrough => LbMode::Passthrough,
            },
            health_policy: match lb.health_policy {
                LocalHealthPolicy::OnlyHealthy => LbHealthPolicy::OnlyHealthy,
                LocalHealthPolicy::AllowAll => LbHealthPolicy::AllowAll,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<NetworkAddress>,
    #[serde(default)]
    ports: HashMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    endpoints: Option<serde_yaml_ng::Value>,
    waypoint: Option<LocalGateway>,
    load_balancer: Option<LocalLoadBalancer>,
    ip_families: Option<LocalIpFamily>,
    /// ztunnel's `cidrVips: [{network: "", cidr: 10.0.0.0/24}]`.
    #[serde(default)]
    cidr_vips: Vec<LocalCidr>,
    #[serde(default)]
    canonical: bool,
}

/// ztunnel's local spelling of a service's IP families.
#[derive(Debug, Deserialize)]
enum LocalIpFamily {
    IPv4,
    IPv6,
    Dual,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalCidr {
    #[serde(default)]
    network: String,
    cidr: IpNet,
}

#[derive(Debug, Default, Deserialize)]
enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Default, Deserialize)]
enum Status {
    #[default]
    Healthy,
    Unhealthy,
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for NamespacedHostname {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// Names an entry of the file for error messages: `workloads[2] (uid)`, `policies[0] (ns/name)`.
struct Item<'a> {
    list: &'static str,
    index: usize,
    name: &'a str,
}

impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}[{}]", self.list, self.index)
        } else {
            write!(f, "{}[{}] ({})", self.list, self.index, self.name)
        }
    }
}

impl LocalConfig {
    fn into_store(self, path: &Path, defaults: &Defaults) -> Result<Loaded, LoadError> {
        let mut loader = Loader {
            path,
            store: Store::default(),
            warnings: Vec::new(),
        };
        for (index, s) in self.services.into_iter().enumerate() {
            loader.add_service(index, s)?;
        }
        for (index, w) in self.workloads.into_iter().enumerate() {
            loader.add_workload(index, w, defaults)?;
        }
        for (index, p) in self.policies.into_iter().enumerate() {
            loader.add_policy(index, p)?;
        }
        loader.warn_missing_policies();
        Ok(Loaded {
            store: loader.store,
            warnings: loader.warnings,
        })
    }
}

/// The store being filled from one file, and what to tell the operator about it.
struct Loader<'a> {
    path: &'a Path,
    store: Store,
    warnings: Vec<String>,
}

impl Loader<'_> {
    fn warn(&mut self, message: impl fmt::Display) {
        self.warnings
            .push(format!("{}: {message}", self.path.display()));
    }

    fn invalid(&self, item: &str, message: impl Into<String>) -> LoadError {
        LoadError::Invalid {
            path: self.path.to_path_buf(),
            item: item.to_string(),
            message: message.into(),
        }
    }

    /// Warns about each field ztunnel accepts that this version does not act on.
    fn warn_unused(&mut self, item: &str, fields: &[(&str, bool)]) {
        for (field, present) in fields {
            if *present {
                self.warn(format_args!(
                    "{item}: field `{field}` is accepted but not used by this version"
                ));
            }
        }
    }

    fn add_service(&mut self, index: usize, s: LocalService) -> Result<(), LoadError> {
        let item = Item {
            list: "services",
            index,
            name: &s.hostname,
        }
        .to_string();
        self.warn_unused(&item, &[("endpoints", s.endpoints.is_some())]);
        for (field, value) in [
            ("name", &s.name),
            ("namespace", &s.namespace),
            ("hostname", &s.hostname),
        ] {
            if value.is_empty() {
                return Err(self.invalid(&item, format!("`{field}` must not be empty")));
            }
        }
        for (field, value) in [("namespace", &s.namespace), ("hostname", &s.hostname)] {
            if value.contains('/') {
                return Err(self.invalid(
                    &item,
                    format!(
                        "`{field}` {value:?} contains '/', which makes the service key ambiguous"
                    ),
                ));
            }
        }
        if s.ports.contains_key(&0) {
            return Err(self.invalid(&item, "`ports` has service port 0"));
        }
        for (i, vip) in s.vips.iter().enumerate() {
            if let Some(reason) = unusable_address(vip.address) {
                return Err(self.invalid(&item, format!("`vips[{i}]` {}: {reason}", vip.address)));
            }
        }
        let mut cidr_vips = Vec::with_capacity(s.cidr_vips.len());
        for (i, range) in s.cidr_vips.into_iter().enumerate() {
            let cidr = range.cidr.trunc();
            if let Some(reason) = unusable_range(cidr) {
                return Err(self.invalid(&item, format!("`cidrVips[{i}]` {cidr}: {reason}")));
            }
            cidr_vips.push(NetworkCidr {
                network: range.network,
                cidr,
            });
        }
        let waypoint = s
            .waypoint
            .map(LocalGateway::into_gateway)
            .transpose()
            .map_err(|e| self.invalid(&item, e))?;
        let service = Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips: s.vips,
            cidr_vips,
            ports: s.ports,
            subject_alt_names: s.subject_alt_names,
            load_balancing: s.load_balancer.map(LoadBalancing::from),
            ip_families: s.ip_families.map(|f| match f {
                LocalIpFamily::IPv4 => IpFamily::V4,
                LocalIpFamily::IPv6 => IpFamily::V6,
                LocalIpFamily::Dual => IpFamily::Dual,
            }),
            canonical: s.canonical,
            waypoint,
        };
        if self.store.service(&service.key()).is_some() {
            return Err(self.invalid(&item, format!("service {} is defined twice", service.key())));
        }
        self.store.insert_service(service);
        Ok(())
    }

    fn add_workload(
        &mut self,
        index: usize,
        w: LocalWorkload,
        defaults: &Defaults,
    ) -> Result<(), LoadError> {
        let label = if w.uid.is_empty() { &w.name } else { &w.uid };
        let item = Item {
            list: "workloads",
            index,
            name: label,
        }
        .to_string();
        self.warn_unused(
            &item,
            &[
                ("nativeTunnel", w.native_tunnel.is_some()),
                ("applicationTunnel", w.application_tunnel.is_some()),
            ],
        );
        if w.namespace.is_empty() {
            return Err(self.invalid(&item, "`namespace` must not be empty"));
        }
        if w.uid.is_empty() && w.name.is_empty() {
            return Err(self.invalid(&item, "needs a `uid` or a `name`"));
        }
        if w.workload_ips.is_empty() && w.hostname.is_empty() {
            self.warn(format_args!(
                "{item}: no `workloadIps` and no `hostname`; traffic can never reach it"
            ));
        }
        for (i, ip) in w.workload_ips.iter().enumerate() {
            if let Some(reason) = unusable_address(*ip) {
                return Err(self.invalid(&item, format!("`workloadIps[{i}]` {ip}: {reason}")));
            }
        }
        let host_network = match w
            .network_mode
            .to_ascii_lowercase()
            .replace('_', "")
            .as_str()
        {
            "" | "standard" => false,
            "hostnetwork" => true,
            other => {
                return Err(self.invalid(
                    &item,
                    format!("`networkMode` {other:?} is not one of Standard, HostNetwork"),
                ))
            }
        };
        let workload_type = if w.workload_type.is_empty() {
            String::new()
        } else {
            parse_workload_type(&w.workload_type).ok_or_else(|| {
                self.invalid(
                    &item,
                    format!(
                        "`workloadType` {:?} is not one of deployment, cronjob, pod, job",
                        w.workload_type
                    ),
                )
            })?
        };
        for key in &w.authorization_policies {
            super::types::check_policy_key(key).map_err(|reason| {
                self.invalid(&item, format!("`authorizationPolicies`: {reason}"))
            })?;
        }
        for (key, ports) in &w.services {
            if ports.contains_key(&0) {
                return Err(self.invalid(&item, format!("`services` {key} has service port 0")));
            }
        }
        let waypoint = w
            .waypoint
            .map(LocalGateway::into_gateway)
            .transpose()
            .map_err(|e| self.invalid(&item, e))?;
        let network_gateway = w
            .network_gateway
            .map(|gw| gw.into_gateway_at("networkGateway"))
            .transpose()
            .map_err(|e| self.invalid(&item, e))?;
        let mut workload = Workload {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            service_account: w.service_account,
            trust_domain: w.trust_domain,
            workload_ips: w.workload_ips,
            protocol: match w.protocol {
                Protocol::Tcp => InboundProtocol::Tcp,
                Protocol::Hbone => InboundProtocol::Hbone,
            },
            node: w.node,
            network: w.network,
            cluster_id: w.cluster_id,
            hostname: w.hostname,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            workload_type,
            status: match w.status {
                Status::Healthy => HealthStatus::Healthy,
                Status::Unhealthy => HealthStatus::Unhealthy,
            },
            services: w.services,
            authorization_policies: w.authorization_policies,
            host_network,
            locality: Locality {
                region: w.locality.region,
                zone: w.locality.zone,
                subzone: w.locality.subzone,
            },
            capacity: w.capacity.unwrap_or(DEFAULT_CAPACITY),
            waypoint,
            network_gateway,
        };
        defaults.fill_workload(&mut workload);
        if workload.uid.is_empty() {
            // istiod's uid form for a Kubernetes pod.
            workload.uid = format!(
                "{}//v1/Pod/{}/{}",
                workload.cluster_id, workload.namespace, workload.name
            );
        }
        if self.store.workload_by_uid(&workload.uid).is_some() {
            return Err(self.invalid(&item, format!("uid {:?} is used twice", workload.uid)));
        }
        let missing: Vec<_> = workload
            .services
            .keys()
            .filter(|key| self.store.service(key).is_none())
            .cloned()
            .collect();
        for key in missing {
            self.warn(format_args!(
                "{item}: names service {key}, which the file does not define"
            ));
        }
        self.store.insert_workload(workload);
        Ok(())
    }

    /// A workload naming a policy the file does not define is loaded (the policy is simply
    /// skipped when connections are authorized, as an xDS policy still in flight would be),
    /// but it is most likely a typo, so the operator is told.
    fn warn_missing_policies(&mut self) {
        let mut missing: Vec<String> = self
            .store
            .workloads()
            .flat_map(|w| {
                w.authorization_policies
                    .iter()
                    .filter(|key| self.store.policy(key).is_none())
                    .map(|key| {
                        format!(
                            "workload {} names policy {key}, which the file does not define",
                            w.uid
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        missing.sort();
        for line in missing {
            self.warn(line);
        }
    }

    fn add_policy(&mut self, index: usize, p: LocalPolicy) -> Result<(), LoadError> {
        let label = p.label();
        let item = Item {
            list: "policies",
            index,
            name: &label,
        }
        .to_string();
        let policy = p.into_policy().map_err(|e| self.invalid(&item, e))?;
        if self.store.policy(&label).is_some() {
            return Err(self.invalid(&item, format!("policy {label} is defined twice")));
        }
        self.store.insert_policy(policy);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
