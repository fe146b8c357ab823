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

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::store::{Store, StoreError};
use super::types::{
    HealthStatus, InboundProtocol, NamespacedHostname, NetworkAddress, Service, Workload,
};

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
    #[error("{path}: {item}: {source}")]
    Conflict {
        path: PathBuf,
        item: String,
        source: Box<StoreError>,
    },
}

/// A successfully loaded file: the store to install and the warnings to log.
#[derive(Debug)]
pub struct Loaded {
    pub store: Store,
    pub warnings: Vec<String>,
}

/// Defaults applied to fields the file leaves empty (as istiod would fill them).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub trust_domain: String,
    pub cluster_id: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }
}

impl Defaults {
    /// Fills the fields a control plane or file may leave empty, the way istiod does, so a
    /// workload reads the same whether it came from a local file or from xDS: trust domain and
    /// cluster id from `self`, service account `default`, workload type `deployment` (the
    /// proto's zero value).
    pub(super) fn fill_workload(&self, workload: &mut Workload) {
        fill(&mut workload.trust_domain, &self.trust_domain);
        fill(&mut workload.cluster_id, &self.cluster_id);
        fill(&mut workload.service_account, "default");
        fill(&mut workload.workload_type, "deployment");
    }
}

fn fill(field: &mut String, default: &str) {
    if field.is_empty() {
        *field = default.to_string();
    }
}

pub fn load_file(path: &Path, defaults: &Defaults) -> Result<Loaded, LoadError> {
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
    policies: Vec<serde_yaml_ng::Value>,
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
    // Accepted (ztunnel's format has them) but not acted on yet: each one present is warned about.
    waypoint: Option<serde_yaml_ng::Value>,
    network_gateway: Option<serde_yaml_ng::Value>,
    network_mode: Option<serde_yaml_ng::Value>,
    native_tunnel: Option<serde_yaml_ng::Value>,
    application_tunnel: Option<serde_yaml_ng::Value>,
    authorization_policies: Option<serde_yaml_ng::Value>,
    locality: Option<serde_yaml_ng::Value>,
    capacity: Option<serde_yaml_ng::Value>,
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
    waypoint: Option<serde_yaml_ng::Value>,
    load_balancer: Option<serde_yaml_ng::Value>,
    ip_families: Option<serde_yaml_ng::Value>,
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

/// Names an entry of the file for error messages: `workloads[2] (uid "...")`.
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
        let mut store = Store::default();
        let mut warnings = Vec::new();
        let invalid = |item: String, message: String| LoadError::Invalid {
            path: path.to_path_buf(),
            item,
            message,
        };
        for (index, s) in self.services.into_iter().enumerate() {
            let item = Item {
                list: "services",
                index,
                name: &s.hostname,
            }
            .to_string();
            for (field, present) in [
                ("endpoints", s.endpoints.is_some()),
                ("waypoint", s.waypoint.is_some()),
                ("loadBalancer", s.load_balancer.is_some()),
                ("ipFamilies", s.ip_families.is_some()),
            ] {
                if present {
                    warnings.push(format!(
                        "{}: {item}: field `{field}` is accepted but not used by this version",
                        path.display()
                    ));
                }
            }
            for (field, value) in [
                ("name", &s.name),
                ("namespace", &s.namespace),
                ("hostname", &s.hostname),
            ] {
                if value.is_empty() {
                    return Err(invalid(item, format!("`{field}` must not be empty")));
                }
            }
            if s.ports.contains_key(&0) {
                return Err(invalid(item, "`ports` has service port 0".into()));
            }
            let service = Service {
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                vips: s.vips,
                ports: s.ports,
                subject_alt_names: s.subject_alt_names,
            };
            if store.service(&service.key()).is_some() {
                return Err(invalid(
                    item,
                    format!("service {} is defined twice", service.key()),
                ));
            }
            store
                .insert_service(service)
                .map_err(|source| LoadError::Conflict {
                    path: path.to_path_buf(),
                    item: item.clone(),
                    source: Box::new(source),
                })?;
        }
        for (index, w) in self.workloads.into_iter().enumerate() {
            let label = if w.uid.is_empty() {
                w.name.clone()
            } else {
                w.uid.clone()
            };
            let item = Item {
                list: "workloads",
                index,
                name: &label,
            }
            .to_string();
            for (field, present) in [
                ("waypoint", w.waypoint.is_some()),
                ("networkGateway", w.network_gateway.is_some()),
                ("networkMode", w.network_mode.is_some()),
                ("nativeTunnel", w.native_tunnel.is_some()),
                ("applicationTunnel", w.application_tunnel.is_some()),
                ("authorizationPolicies", w.authorization_policies.is_some()),
                ("locality", w.locality.is_some()),
                ("capacity", w.capacity.is_some()),
            ] {
                if present {
                    warnings.push(format!(
                        "{}: {item}: field `{field}` is accepted but not used by this version",
                        path.display()
                    ));
                }
            }
            if w.namespace.is_empty() {
                return Err(invalid(item, "`namespace` must not be empty".into()));
            }
            if w.uid.is_empty() && w.name.is_empty() {
                return Err(invalid(item, "needs a `uid` or a `name`".into()));
            }
            if w.workload_ips.is_empty() {
                warnings.push(format!(
                    "{}: {item}: no `workloadIps`; traffic can never reach it",
                    path.display()
                ));
            }
            let cluster_id = non_empty_or(w.cluster_id, &defaults.cluster_id);
            let uid = if w.uid.is_empty() {
                format!("{cluster_id}//v1/Pod/{}/{}", w.namespace, w.name)
            } else {
                w.uid
            };
            if store.workload_by_uid(&uid).is_some() {
                return Err(invalid(item, format!("uid {uid:?} is used twice")));
            }
            let workload = Workload {
                uid,
                name: w.name,
                namespace: w.namespace,
                service_account: non_empty_or(w.service_account, "default"),
                trust_domain: non_empty_or(w.trust_domain, &defaults.trust_domain),
                workload_ips: w.workload_ips,
                protocol: match w.protocol {
                    Protocol::Tcp => InboundProtocol::Tcp,
                    Protocol::Hbone => InboundProtocol::Hbone,
                },
                node: w.node,
                network: w.network,
                cluster_id,
                hostname: w.hostname,
                canonical_name: w.canonical_name,
                canonical_revision: w.canonical_revision,
                workload_name: w.workload_name,
                workload_type: w.workload_type,
                status: match w.status {
                    Status::Healthy => HealthStatus::Healthy,
                    Status::Unhealthy => HealthStatus::Unhealthy,
                },
                services: w.services,
            };
            for key in workload.services.keys() {
                if store.service(key).is_none() {
                    warnings.push(format!(
                        "{}: {item}: names service {key}, which the file does not define",
                        path.display()
                    ));
                }
            }
            store
                .insert_workload(workload)
                .map_err(|source| LoadError::Conflict {
                    path: path.to_path_buf(),
                    item: item.clone(),
                    source: Box::new(source),
                })?;
        }
        if !self.policies.is_empty() {
            warnings.push(format!(
                "{}: `policies` has {} entries; authorization policies are not enforced by this version",
                path.display(),
                self.policies.len()
            ));
        }
        Ok(Loaded { store, warnings })
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  workloadIps: ["10.77.1.10"]
  protocol: HBONE
  node: n1
  canonicalName: client
  clusterId: cluster1
  services: {}
- name: server
  namespace: default
  workloadIps: ["10.77.2.10", "fd00::10"]
  protocol: HBONE
  trustDomain: example.org
  node: n2
  network: ""
  services:
    "default/server.default.svc.cluster.local":
      80: 9090
services:
- name: server
  namespace: default
  hostname: server.default.svc.cluster.local
  vips: ["/10.96.0.10", "net1/10.96.0.11"]
  ports:
    80: 8080
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/server"]
"#;

    fn load(text: &str) -> Result<Loaded, LoadError> {
        load_str(text, Path::new("mesh.yaml"), &Defaults::default())
    }

    #[test]
    fn loads_ztunnel_shaped_yaml_into_the_store() {
        let loaded = load(GOOD).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let store = loaded.store;
        let client = store
            .workload_by_ip("", "10.77.1.10".parse().unwrap())
            .unwrap();
        assert_eq!(
            client.identity().to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(client.protocol, InboundProtocol::Hbone);
        assert_eq!(client.node, "n1");
        assert_eq!(client.cluster_id, "cluster1");
        // Defaults as istiod fills them: uid, service account, trust domain.
        let server = store
            .workload_by_ip("", "fd00::10".parse().unwrap())
            .unwrap();
        assert_eq!(server.uid, "Kubernetes//v1/Pod/default/server");
        assert_eq!(server.service_account, "default");
        assert_eq!(server.trust_domain, "example.org");
        let svc = store
            .service_by_vip("net1", "10.96.0.11".parse().unwrap())
            .unwrap();
        assert_eq!(svc.ports[&80], 8080);
        let up = store
            .resolve("", "10.96.0.10:80".parse().unwrap(), |_| 0)
            .unwrap();
        assert_eq!(up.target(), "10.77.2.10:9090".parse().unwrap());
    }

    #[test]
    fn syntax_errors_name_file_line_and_field() {
        let text = "workloads:\n- name: a\n  namespace: default\n  protocol: HBONEX\n";
        let err = load(text).unwrap_err();
        let LoadError::Syntax { line, message, .. } = &err else {
            panic!("expected a located error, got {err}");
        };
        assert_eq!(*line, 4);
        assert!(message.contains("protocol"), "{message}");
        assert!(err.to_string().starts_with("mesh.yaml:4:"), "{err}");

        let text = "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.300\"]\n";
        let err = load(text).unwrap_err();
        assert!(matches!(err, LoadError::Syntax { line: 4, .. }), "{err}");
        assert!(err.to_string().contains("workloadIps"), "{err}");

        let text =
            "services:\n- name: s\n  namespace: d\n  hostname: h\n  vips: [\"net/not-an-ip\"]\n";
        let err = load(text).unwrap_err();
        assert!(matches!(err, LoadError::Syntax { line: 5, .. }), "{err}");
        assert!(err.to_string().contains("not-an-ip"), "{err}");

        let text = "workloads:\n- name: a\n  namespace: default\n  services:\n    nohostname: {80: 8080}\n";
        let err = load(text).unwrap_err();
        assert!(matches!(err, LoadError::Syntax { line: 5, .. }), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors_like_ztunnel() {
        let text = "workloads:\n- name: a\n  namespace: default\n  workloadIP: 10.0.0.1\n";
        let err = load(text).unwrap_err();
        assert!(matches!(err, LoadError::Syntax { line: 4, .. }), "{err}");
        assert!(err.to_string().contains("workloadIP"), "{err}");
    }

    #[test]
    fn fields_not_modeled_yet_are_warned_about_by_name() {
        let text = r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
  authorizationPolicies: ["default/deny"]
policies:
- name: deny
  namespace: default
"#;
        let loaded = load(text).unwrap();
        let all = loaded.warnings.join("\n");
        assert!(all.contains("`waypoint`"), "{all}");
        assert!(all.contains("`authorizationPolicies`"), "{all}");
        assert!(all.contains("`policies` has 1 entries"), "{all}");
    }

    #[test]
    fn semantic_errors_name_the_entry() {
        let dup_ip = "workloads:\n- {name: a, namespace: d, workloadIps: [\"10.0.0.1\"]}\n- {name: b, namespace: d, workloadIps: [\"10.0.0.1\"]}\n";
        let err = load(dup_ip).unwrap_err();
        assert!(err.to_string().contains("workloads[1] (b)"), "{err}");
        assert!(err.to_string().contains("10.0.0.1"), "{err}");

        let dup_uid = "workloads:\n- {uid: x, namespace: d}\n- {uid: x, namespace: d}\n";
        assert!(load(dup_uid)
            .unwrap_err()
            .to_string()
            .contains("used twice"));

        let no_ns = "workloads:\n- {name: a, namespace: \"\"}\n";
        assert!(load(no_ns).unwrap_err().to_string().contains("`namespace`"));
    }

    #[test]
    fn empty_file_is_an_empty_mesh() {
        let loaded = load("").unwrap();
        assert_eq!(loaded.store.workloads().count(), 0);
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = load_file(Path::new("/nonexistent/mesh.yaml"), &Defaults::default()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read /nonexistent/mesh.yaml"));
    }
}
