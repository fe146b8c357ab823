//! A builder for the pods tests put into the stand-in: a Running, Ready pod with one container,
//! on a node, with a pod IP and a service account — the fields the CNI plugin and node agent
//! read (`spec.nodeName`, `spec.hostNetwork`, `spec.serviceAccountName`, `status.podIP(s)`,
//! `status.phase`, labels, annotations).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Builds a [`Pod`]:
///
/// ```text
/// let pod = PodBuilder::new("demo", "web-1")
///     .node("node1")
///     .ip("10.244.1.5".parse()?)
///     .label("app", "web")
///     .annotation("ambient.istio.io/redirection", "enabled")
///     .build();
/// kube.put_pod(pod);
/// ```
///
/// Defaults: no uid (the stand-in assigns one; set it with [`uid`](Self::uid) when the test needs
/// to know it up front, e.g. for CNI args), no node, no IP, service account `default`, phase
/// `Running` with `Ready=True`, not host-network, one container `app` (image `app:latest`).
#[derive(Debug, Clone)]
pub struct PodBuilder {
    namespace: String,
    name: String,
    uid: Option<String>,
    node: Option<String>,
    ips: Vec<IpAddr>,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    host_network: bool,
    phase: String,
}

impl PodBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: None,
            node: None,
            ips: Vec::new(),
            service_account: "default".to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            host_network: false,
            phase: "Running".to_string(),
        }
    }

    /// `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_string());
        self
    }

    /// `spec.nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Adds a pod IP: the first becomes `status.podIP`, all go to `status.podIPs`.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// `spec.serviceAccountName` (default `default`).
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.to_string();
        self
    }

    /// Adds `metadata.labels[key] = value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds `metadata.annotations[key] = value`.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// `spec.hostNetwork`.
    pub fn host_network(mut self, on: bool) -> Self {
        self.host_network = on;
        self
    }

    /// `status.phase` (default `Running`; `Ready` is `True` only while `Running`).
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.to_string();
        self
    }

    pub fn build(self) -> Pod {
        let ready = if self.phase == "Running" {
            "True"
        } else {
            "False"
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace),
                uid: self.uid,
                labels: (!self.labels.is_empty()).then_some(self.labels),
                annotations: (!self.annotations.is_empty()).then_some(self.annotations),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".to_string(),
                    image: Some("app:latest".to_string()),
                    ..Container::default()
                }],
                node_name: self.node,
                service_account_name: Some(self.service_account),
                host_network: self.host_network.then_some(true),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(self.phase),
                pod_ip: self.ips.first().map(ToString::to_string),
                pod_ips: (!self.ips.is_empty()).then(|| {
                    self.ips
                        .iter()
                        .map(|ip| PodIP { ip: ip.to_string() })
                        .collect()
                }),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_string(),
                    status: ready.to_string(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }
}
