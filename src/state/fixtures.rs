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
        authorization_policies: vec![],
        host_network: false,
        locality: Default::default(),
        capacity: super::types::DEFAULT_CAPACITY,
        waypoint: None,
        network_gateway: None,
    }
}

/// A service in `default` with one VIP and port 80 → 8080.
pub fn service(host: &str, vip: &str) -> Service {
    Service {
        name: host.into(),
        namespace: "default".into(),
        hostname: host.into(),
        vips: vec![vip.parse().unwrap()],
        cidr_vips: vec![],
        ports: HashMap::from([(80, 8080)]),
        subject_alt_names: vec![],
        load_balancing: None,
        ip_families: None,
        canonical: false,
        waypoint: None,
    }
}

/// A `LOCAL_XDS_PATH` file using every field the store models: workloads (both protocols,
/// IPv4 and IPv6, several networks, defaults left to fill), services and policies with every
/// kind of match. Used to check that each conversion keeps everything; a file so the control
/// plane's encoder tests (another crate) check against the same mesh.
pub const RICH_MESH: &str = include_str!("../../tests/fixtures/rich-mesh.yaml");

/// A namespace-scoped ALLOW policy with no rules.
pub fn policy(namespace: &str, name: &str) -> Policy {
    Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope: PolicyScope::Namespace,
        ..Policy::default()
    }
}
