//! Small builders for state used by unit tests across modules.

use std::collections::HashMap;

use super::types::{HealthStatus, InboundProtocol, Policy, PolicyScope, Service, Workload};

/// An HBONE workload on node `n1` whose uid, name and service account are all `uid`.
pub fn workload(uid: &str, ip: &str) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        service_account: uid.into(),
        trust_domain: "cluster.local".into(),
        workload_ips: vec![ip.parse().unwrap()],
        protocol: InboundProtocol::Hbone,
        node: "n1".into(),
        network: String::new(),
        cluster_id: "Kubernetes".into(),
        hostname: String::new(),
        canonical_name: String::new(),
        canonical_revision: String::new(),
        workload_name: String::new(),
        workload_type: String::new(),
        status: HealthStatus::Healthy,
        services: HashMap::new(),
    }
}

/// A service in `default` with one VIP and port 80 → 8080.
pub fn service(host: &str, vip: &str) -> Service {
    Service {
        name: host.into(),
        namespace: "default".into(),
        hostname: host.into(),
        vips: vec![vip.parse().unwrap()],
        ports: HashMap::from([(80, 8080)]),
        subject_alt_names: vec![],
    }
}

/// A `LOCAL_XDS_PATH` file using every field the store models: workloads (both protocols,
/// IPv4 and IPv6, several networks, defaults left to fill), services and policies with every
/// kind of match. Used to check that each conversion keeps everything.
pub const RICH_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  trustDomain: example.org
  workloadIps: ["10.77.1.10"]
  protocol: HBONE
  node: n1
  network: net1
  hostname: client.example
  canonicalName: client
  canonicalRevision: v2
  workloadName: client-deploy
  workloadType: pod
  clusterId: cluster1
  status: Unhealthy
  services: {}
- name: server
  namespace: default
  workloadIps: ["10.77.2.10", "fd00::10"]
  protocol: TCP
  node: n2
  services:
    "default/server.default.svc.cluster.local":
      80: 9090
      443: 0
    "other/db.other.svc.cluster.local": {}
services:
- name: server
  namespace: default
  hostname: server.default.svc.cluster.local
  vips: ["/10.96.0.10", "net1/10.96.0.11", "/fd00:96::10"]
  ports:
    80: 8080
    443: 0
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/server"]
- name: db
  namespace: other
  hostname: db.other.svc.cluster.local
policies:
- name: allow-sleep
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [{Exact: cluster.local/ns/default/sa/sleep}, {Prefix: "cluster.local/ns/ops/"}]
        notPrincipals: [{Suffix: /sa/untrusted}]
        namespaces: [{Exact: default}]
        notNamespaces: [{Presence: []}]
      - serviceAccounts: [{namespace: default, serviceAccount: sleep}]
        notServiceAccounts: [{namespace: default, serviceAccount: bad}]
    - - destinationPorts: [80, 443]
        notDestinationPorts: [8080]
        destinationIps: ["10.77.2.0/24", "fd00::/64"]
        notDestinationIps: ["10.77.2.99/32"]
  - - - sourceIps: ["10.0.0.0/8"]
        notSourceIps: ["10.1.0.0/16"]
- name: deny-all
  namespace: istio-system
  scope: Global
  action: Deny
- name: selected
  namespace: default
  scope: WorkloadSelector
  action: Allow
  rules: [[]]
"#;

/// A namespace-scoped ALLOW policy with no rules.
pub fn policy(namespace: &str, name: &str) -> Policy {
    Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope: PolicyScope::Namespace,
        ..Policy::default()
    }
}
