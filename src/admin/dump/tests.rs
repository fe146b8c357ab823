//! The dump decoded as `istioctl ztunnel-config` decodes it: the structs below mirror the Go
//! types of istioctl's `writer/ztunnel/configdump` package (their json tags as serde names,
//! their Go types as Rust types), so a key spelled differently reads as missing and a value of
//! another type fails to decode, as it would fail istioctl.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_base::readiness::Readiness;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::super::AdminState;
use crate::identity::{CertificateSource, Identity, LocalCa, SecretManager};
use crate::inpod::manager::{PodSummary, PodTable};
use crate::metrics::Metrics;
use crate::state::{load_str, Defaults, StateHandle};

// ------------------------------------------------------------------ istioctl's Go types

/// `rawDump` + `ZtunnelDump`: Go matches keys case-insensitively (`workloadstate`).
#[derive(Debug, Deserialize)]
struct ZtunnelDump {
    workloads: Vec<ZtunnelWorkload>,
    services: Vec<ZtunnelService>,
    policies: Vec<ZtunnelPolicy>,
    certificates: Vec<CertsDump>,
    #[serde(rename = "workloadState", default)]
    workload_state: HashMap<String, WorkloadState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelWorkload {
    uid: String,
    #[serde(rename = "workloadIps")]
    workload_ips: Vec<String>,
    waypoint: Option<GatewayAddress>,
    #[serde(rename = "networkGateway")]
    network_gateway: Option<GatewayAddress>,
    protocol: String,
    name: String,
    namespace: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
    #[serde(rename = "workloadName")]
    workload_name: String,
    #[serde(rename = "workloadType")]
    workload_type: String,
    #[serde(rename = "canonicalName")]
    canonical_name: String,
    #[serde(rename = "canonicalRevision")]
    canonical_revision: String,
    #[serde(rename = "clusterId")]
    cluster_id: String,
    #[serde(rename = "trustDomain")]
    trust_domain: String,
    locality: Locality,
    node: String,
    network: String,
    status: String,
    hostname: String,
    capacity: u32,
    #[serde(rename = "applicationTunnel")]
    application_tunnel: ApplicationTunnel,
    #[serde(rename = "authorizationPolicies")]
    authorization_policies: Vec<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct Locality {
    region: String,
    zone: String,
    subzone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApplicationTunnel {
    #[allow(dead_code)]
    protocol: String,
    #[allow(dead_code)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct GatewayAddress {
    destination: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct LoadBalancer {
    mode: String,
    #[serde(rename = "routingPreferences")]
    routing_preferences: Vec<String>,
    #[serde(rename = "healthPolicy")]
    health_policy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelEndpoint {
    #[serde(rename = "workloadUid")]
    workload_uid: String,
    #[allow(dead_code)]
    service: String,
    #[allow(dead_code)]
    address: String,
    port: HashMap<u16, u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelService {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<String>,
    #[serde(rename = "cidrVips")]
    cidr_vips: Vec<serde_json::Value>,
    ports: HashMap<String, i64>,
    #[serde(rename = "loadBalancer")]
    load_balancer: Option<LoadBalancer>,
    waypoint: Option<GatewayAddress>,
    endpoints: HashMap<String, ZtunnelEndpoint>,
    #[serde(rename = "subjectAltNames")]
    subject_alt_names: Vec<String>,
    #[serde(rename = "ipFamilies")]
    ip_families: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyMatch {
    namespaces: Vec<StringMatch>,
    #[serde(rename = "notNamespaces")]
    not_namespaces: Vec<StringMatch>,
    principals: Vec<StringMatch>,
    #[serde(rename = "notPrincipals")]
    not_principals: Vec<StringMatch>,
    #[serde(rename = "sourceIps")]
    source_ips: Vec<String>,
    #[serde(rename = "notSourceIps")]
    not_source_ips: Vec<String>,
    #[serde(rename = "destinationIps")]
    destination_ips: Vec<String>,
    #[serde(rename = "notDestinationIps")]
    not_destination_ips: Vec<String>,
    #[serde(rename = "destinationPorts")]
    destination_ports: Vec<u16>,
    #[serde(rename = "notDestinationPorts")]
    not_destination_ports: Vec<u16>,
    #[serde(rename = "serviceAccounts")]
    service_accounts: Vec<ServiceAccountMatch>,
    #[serde(rename = "notServiceAccounts")]
    not_service_accounts: Vec<ServiceAccountMatch>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct StringMatch {
    #[serde(rename = "Exact")]
    exact: String,
    #[serde(rename = "Suffix")]
    suffix: String,
    #[serde(rename = "Prefix")]
    prefix: String,
    /// Go's `any`.
    #[serde(rename = "Presence")]
    presence: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct ServiceAccountMatch {
    namespace: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelPolicy {
    name: String,
    namespace: String,
    scope: String,
    action: String,
    rules: Vec<Vec<Vec<PolicyMatch>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CertsDump {
    identity: String,
    state: String,
    #[serde(rename = "certChain")]
    cert_chain: Vec<Cert>,
    #[serde(rename = "rootCerts")]
    root_cert: Vec<Cert>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Cert {
    pem: String,
    #[serde(rename = "serialNumber")]
    serial_number: String,
    #[serde(rename = "validFrom")]
    valid_from: String,
    #[serde(rename = "expirationTime")]
    expiration_time: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkloadState {
    state: String,
    info: WorkloadInfo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkloadInfo {
    name: String,
    namespace: String,
    #[serde(rename = "trustDomain")]
    trust_domain: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
}

// ------------------------------------------------------------------------------- fixtures

/// Every field the store models that the dump shows: locality and capacity, a host-network
/// unhealthy pod, a service with load balancing and a per-workload port override, policies
/// with every kind of match.
const MESH: &str = r#"
workloads:
- uid: Kubernetes//Pod/default/server-1
  name: server-1
  namespace: default
  serviceAccount: server
  workloadIps: ["10.0.0.2", "fd00::2"]
  protocol: HBONE
  node: n2
  network: net1
  canonicalName: server
  canonicalRevision: v1
  workloadName: server
  workloadType: deployment
  locality: {region: r1, zone: z1}
  capacity: 3
  services:
    "default/server.default.svc.cluster.local":
      80: 9090
  authorizationPolicies: ["default/selected"]
  waypoint: {destination: "net1/10.0.0.9", hboneMtlsPort: 15009}
- uid: Kubernetes//Pod/kube-system/agent
  name: agent
  namespace: kube-system
  workloadIps: ["10.0.0.1"]
  node: n2
  networkMode: HostNetwork
  status: Unhealthy
services:
- name: server
  namespace: default
  hostname: server.default.svc.cluster.local
  vips: ["/10.96.0.10", "net1/10.96.0.11"]
  ports: {80: 8080, 443: 0}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/server-canary"]
  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover, healthPolicy: AllowAll}
- name: db
  namespace: other
  hostname: db.other.svc.cluster.local
  waypoint: {destination: "other/wp.other.svc.cluster.local"}
- name: ext
  namespace: other
  hostname: ext.example.com
  cidrVips: [{network: net1, cidr: 240.10.0.0/16}]
  ipFamilies: IPv6
  canonical: true
policies:
- name: allow-sleep
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/sleep, !Prefix "cluster.local/ns/ops/"]
        notPrincipals: [!Suffix /sa/untrusted]
        namespaces: [!Exact default]
        notNamespaces: [!Presence []]
      - serviceAccounts: [{namespace: default, serviceAccount: sleep}]
        notServiceAccounts: [{namespace: default, serviceAccount: bad}]
    - - destinationPorts: [80, 443]
        notDestinationPorts: [8080]
        destinationIps: ["10.0.0.0/24", "fd00::/64"]
        notDestinationIps: ["10.0.0.99/32"]
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
  dryRun: true
  rules: [[]]
"#;

fn state() -> StateHandle {
    let loaded = load_str(MESH, Path::new("mesh.yaml"), &Defaults::default()).expect("the mesh");
    StateHandle::new(loaded.store)
}

fn admin(certs: Arc<SecretManager>, pods: PodTable) -> AdminState {
    AdminState::new(
        Readiness::new(),
        Arc::new(Metrics::for_istio_version(Some("1.28.0"))),
        state(),
        certs,
        pods,
        None,
        String::new(),
    )
}

fn manager(ttl: Duration) -> Arc<SecretManager> {
    let ca = LocalCa::generate("cluster.local").expect("a CA");
    SecretManager::new(CertificateSource::Local(Arc::new(ca)), ttl)
}

/// The dump's bytes as JSON, and decoded the way istioctl decodes them.
fn dump(admin: &AdminState) -> (serde_json::Value, ZtunnelDump) {
    let bytes = super::config_dump(admin).expect("the dump encodes");
    let raw: serde_json::Value = serde_json::from_slice(&bytes).expect("the dump is JSON");
    let decoded = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("istioctl's types cannot decode the dump ({e}): {raw:#}"));
    (raw, decoded)
}

// ---------------------------------------------------------------------------------- tests

#[test]
fn workloads_decode_into_istioctls_type_with_ztunnels_values() {
    let (raw, d) = dump(&admin(
        manager(Duration::from_secs(3600)),
        PodTable::default(),
    ));
    let uids: Vec<&str> = d.workloads.iter().map(|w| w.uid.as_str()).collect();
    assert_eq!(
        uids,
        [
            "Kubernetes//Pod/default/server-1",
            "Kubernetes//Pod/kube-system/agent"
        ],
        "sorted by uid"
    );
    let server = &d.workloads[0];
    assert_eq!(server.name, "server-1");
    assert_eq!(server.namespace, "default");
    assert_eq!(server.workload_ips, ["10.0.0.2", "fd00::2"]);
    assert_eq!(server.protocol, "HBONE");
    assert_eq!(server.service_account, "server");
    assert_eq!(server.trust_domain, "cluster.local");
    assert_eq!(server.workload_name, "server");
    assert_eq!(server.workload_type, "deployment");
    assert_eq!(server.canonical_name, "server");
    assert_eq!(server.canonical_revision, "v1");
    assert_eq!(server.cluster_id, "Kubernetes");
    assert_eq!(server.node, "n2");
    assert_eq!(server.network, "net1");
    assert_eq!(server.status, "Healthy");
    assert_eq!(server.capacity, 3);
    assert_eq!(
        server.locality,
        Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new()
        }
    );
    assert_eq!(server.authorization_policies, ["default/selected"]);
    // A waypoint as ztunnel writes `GatewayAddress`: one destination string and the port.
    assert_eq!(
        server.waypoint.as_ref().map(|w| w.destination.as_str()),
        Some("net1/10.0.0.9")
    );
    assert_eq!(raw["workloads"][0]["waypoint"]["hboneMtlsPort"], 15009);
    assert!(server.network_gateway.is_none());
    assert!(server.hostname.is_empty());
    assert_eq!(
        raw["workloads"][0]["services"],
        serde_json::json!(["default/server.default.svc.cluster.local"])
    );
    assert_eq!(raw["workloads"][0]["networkMode"], "Standard");

    let agent = &d.workloads[1];
    assert_eq!(agent.protocol, "TCP");
    assert_eq!(agent.status, "Unhealthy");
    assert_eq!(agent.capacity, 1, "unset capacity reads as 1");
    assert_eq!(raw["workloads"][1]["networkMode"], "HostNetwork");
    // ztunnel leaves out what is at its default.
    for absent in [
        "locality",
        "authorizationPolicies",
        "services",
        "network",
        "hostname",
    ] {
        assert!(
            raw["workloads"][1].get(absent).is_none(),
            "{absent}: {:#}",
            raw["workloads"][1]
        );
    }
    let _ = &agent.application_tunnel;
}

#[test]
fn services_decode_into_istioctls_type_with_endpoints_keyed_by_uid() {
    let (raw, d) = dump(&admin(
        manager(Duration::from_secs(3600)),
        PodTable::default(),
    ));
    let hosts: Vec<&str> = d.services.iter().map(|s| s.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "db.other.svc.cluster.local",
            "ext.example.com",
            "server.default.svc.cluster.local"
        ],
        "sorted by hostname"
    );
    let server = &d.services[2];
    assert_eq!(
        (server.name.as_str(), server.namespace.as_str()),
        ("server", "default")
    );
    assert_eq!(server.vips, ["/10.96.0.10", "net1/10.96.0.11"]);
    assert_eq!(
        server.ports,
        HashMap::from([("80".to_string(), 8080), ("443".to_string(), 0)])
    );
    assert_eq!(
        server.subject_alt_names,
        ["spiffe://cluster.local/ns/default/sa/server-canary"]
    );
    assert_eq!(
        server.load_balancer,
        Some(LoadBalancer {
            mode: "Failover".into(),
            routing_preferences: vec!["Region".into(), "Zone".into()],
            health_policy: "AllowAll".into(),
        })
    );
    assert!(server.waypoint.is_none());
    let endpoint = &server.endpoints["Kubernetes//Pod/default/server-1"];
    assert_eq!(endpoint.workload_uid, "Kubernetes//Pod/default/server-1");
    assert_eq!(endpoint.port, HashMap::from([(80, 9090)]));
    assert_eq!(
        raw["services"][2]["endpoints"]["Kubernetes//Pod/default/server-1"]["status"],
        "Healthy"
    );
    assert_eq!(server.endpoints.len(), 1);

    let db = &d.services[0];
    assert!(db.endpoints.is_empty() && db.vips.is_empty() && db.ports.is_empty());
    assert_eq!(
        db.waypoint.as_ref().map(|w| w.destination.as_str()),
        Some("other/wp.other.svc.cluster.local")
    );
    assert_eq!(raw["services"][0]["waypoint"]["hboneMtlsPort"], 15008);
    assert!(raw["services"][0].get("loadBalancer").is_none());
    // Always written, as ztunnel writes them, even when empty.
    for present in ["vips", "ports", "endpoints", "subjectAltNames", "canonical"] {
        assert!(raw["services"][0].get(present).is_some(), "{present}");
    }
    // Left out when empty or automatic, as ztunnel leaves them out.
    for absent in ["cidrVips", "ipFamilies"] {
        assert!(raw["services"][0].get(absent).is_none(), "{absent}");
    }
    // ServiceEntry shapes in ztunnel's spelling.
    let ext = &d.services[1];
    assert_eq!(ext.ip_families, "IPv6");
    assert_eq!(
        ext.cidr_vips,
        [serde_json::json!({"network": "net1", "cidr": "240.10.0.0/16"})]
    );
    assert_eq!(raw["services"][1]["canonical"], true);
    assert_eq!(raw["services"][0]["canonical"], false);
}

#[test]
fn policies_decode_into_istioctls_type_with_every_match_kind() {
    let (raw, d) = dump(&admin(
        manager(Duration::from_secs(3600)),
        PodTable::default(),
    ));
    let keys: Vec<String> = d
        .policies
        .iter()
        .map(|p| format!("{}/{} {} {}", p.namespace, p.name, p.scope, p.action))
        .collect();
    assert_eq!(
        keys,
        [
            "default/allow-sleep Namespace Allow",
            "default/selected WorkloadSelector Allow",
            "istio-system/deny-all Global Deny",
        ]
    );
    let rules = &d.policies[0].rules;
    assert_eq!(rules.len(), 2, "two rules");
    assert_eq!(rules[0].len(), 2, "the first rule's two clauses");
    let first = &rules[0][0][0];
    let exact = |v: &str| StringMatch {
        exact: v.into(),
        ..Default::default()
    };
    assert_eq!(
        first.principals,
        [
            exact("cluster.local/ns/default/sa/sleep"),
            StringMatch {
                prefix: "cluster.local/ns/ops/".into(),
                ..Default::default()
            }
        ]
    );
    assert_eq!(
        first.not_principals,
        [StringMatch {
            suffix: "/sa/untrusted".into(),
            ..Default::default()
        }]
    );
    assert_eq!(first.namespaces, [exact("default")]);
    assert_eq!(
        raw["policies"][0]["rules"][0][0][0]["notNamespaces"],
        serde_json::json!([{"Presence": []}]),
        "ztunnel's empty tuple variant"
    );
    assert!(first.not_namespaces[0].presence.is_some());
    let accounts = &rules[0][0][1];
    assert_eq!(
        accounts.service_accounts,
        [ServiceAccountMatch {
            namespace: "default".into(),
            service_account: "sleep".into()
        }]
    );
    assert_eq!(accounts.not_service_accounts[0].service_account, "bad");
    let to = &rules[0][1][0];
    assert_eq!(to.destination_ports, [80, 443]);
    assert_eq!(to.not_destination_ports, [8080]);
    assert_eq!(to.destination_ips, ["10.0.0.0/24", "fd00::/64"]);
    assert_eq!(to.not_destination_ips, ["10.0.0.99/32"]);
    assert_eq!(rules[1][0][0].source_ips, ["10.0.0.0/8"]);
    assert_eq!(rules[1][0][0].not_source_ips, ["10.1.0.0/16"]);
    // Empty match lists are left out, not written as [].
    assert!(raw["policies"][0]["rules"][1][0][0]
        .get("principals")
        .is_none());
    assert_eq!(raw["policies"][1]["dryRun"], true);
    assert_eq!(raw["policies"][1]["rules"], serde_json::json!([[]]));
    assert!(d.policies[2].rules.is_empty());
}

#[tokio::test]
async fn certificates_show_state_chain_and_roots_as_istioctl_reads_them() {
    let certs = manager(Duration::from_secs(3600));
    let id = Identity::new("cluster.local", "default", "server");
    let cert = certs.fetch(&id).await.expect("a certificate");
    let (_, d) = dump(&admin(certs.clone(), PodTable::default()));
    assert_eq!(d.certificates.len(), 1, "{:?}", d.certificates);
    let c = &d.certificates[0];
    assert_eq!(c.identity, "spiffe://cluster.local/ns/default/sa/server");
    assert_eq!(c.state, "Available");
    assert_eq!(
        c.cert_chain.len(),
        cert.chain.len(),
        "leaf and intermediates"
    );
    assert_eq!(c.root_cert.len(), 1, "the CA's root");

    let leaf = &c.cert_chain[0];
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(&leaf.pem)
        .expect("pem is base64");
    let pem = String::from_utf8(pem).expect("PEM text");
    assert_eq!(pem, crate::identity::certs_pem(&cert.chain[..1]));
    // istioctl parses the serial in base 10 and the times as RFC 3339.
    let (_, parsed) = X509Certificate::from_der(cert.leaf()).expect("the leaf parses");
    assert_eq!(
        leaf.serial_number,
        parsed.tbs_certificate.serial.to_str_radix(10)
    );
    assert!(leaf.serial_number.bytes().all(|b| b.is_ascii_digit()));
    for t in [&leaf.valid_from, &leaf.expiration_time] {
        assert_eq!(t.len(), "2026-01-01T00:00:00Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
    assert!(leaf.valid_from < leaf.expiration_time);
    assert!(!c.root_cert[0].pem.is_empty());
}

#[tokio::test]
async fn a_failed_issuance_shows_unavailable_with_the_error() {
    // A zero lifetime is refused by the CA: the slot exists, with its error.
    let certs = manager(Duration::ZERO);
    let id = Identity::new("cluster.local", "default", "server");
    let err = certs.fetch(&id).await.expect_err("no certificate");
    let (_, d) = dump(&admin(certs, PodTable::default()));
    assert_eq!(d.certificates.len(), 1);
    assert_eq!(d.certificates[0].state, format!("Unavailable: {err}"));
    assert!(d.certificates[0].cert_chain.is_empty());
}

#[test]
fn running_pods_are_listed_in_workload_state_and_our_extras_keep_their_keys() {
    let pods = PodTable::default();
    pods.lock().unwrap().insert(
        "pod-uid-1".into(),
        PodSummary {
            workload: "default/client-7d4".into(),
            identity: "spiffe://cluster.local/ns/default/sa/sleep".into(),
            netns: nodetunnel_base::netns::NetnsId {
                dev: 4,
                inode: 4026532,
            },
            connections: Default::default(),
        },
    );
    let (raw, d) = dump(&admin(manager(Duration::from_secs(3600)), pods));
    let state = &d.workload_state["pod-uid-1"];
    assert_eq!(state.state, "Up");
    assert_eq!(state.info.name, "client-7d4");
    assert_eq!(state.info.namespace, "default");
    assert_eq!(state.info.service_account, "sleep");
    assert_eq!(state.info.trust_domain, "cluster.local");
    assert_eq!(raw["pods"][0]["uid"], "pod-uid-1");
    assert_eq!(raw["pods"][0]["workload"], "default/client-7d4");
    assert_eq!(raw["certificateIssuances"], 0);
    assert!(raw["xds"].is_null(), "no xDS client");
    assert_eq!(raw["version"]["istioVersion"], "1.28.0");
    let keys: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "certificateIssuances",
        "certificates",
        "pods",
        "policies",
        "services",
        "version",
        "workloadState",
        "workloads",
        "xds",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    let _: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(raw).expect("the dump is one object");
}

/// Every string in `value`, recursively.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dump_never_holds_a_private_key_in_any_encoding() {
    use base64::Engine;
    let certs = manager(Duration::from_secs(3600));
    let id = Identity::new("cluster.local", "default", "server");
    let cert = certs.fetch(&id).await.expect("a certificate");
    let pods = PodTable::default();
    pods.lock().unwrap().insert(
        "pod-uid-1".into(),
        PodSummary {
            workload: "default/server".into(),
            identity: id.to_string(),
            netns: nodetunnel_base::netns::NetnsId { dev: 4, inode: 7 },
            connections: Default::default(),
        },
    );
    let bytes = super::config_dump(&admin(certs, pods)).expect("the dump encodes");
    let text = String::from_utf8(bytes).expect("UTF-8");
    let raw: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    // The dump does carry the certificate (with its expiry) and the pod, so the check below
    // looks at a dump that has everything a key could hide beside.
    assert_eq!(raw["certificates"][0]["identity"], id.to_string());
    assert!(raw["certificates"][0]["certChain"][0]["expirationTime"].is_string());
    assert_eq!(raw["pods"][0]["uid"], "pod-uid-1");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let key_der = cert.key.secret_der();
    assert!(
        !text.contains(&b64.encode(key_der)),
        "the key's DER, base64"
    );
    let mut all = Vec::new();
    strings(&raw, &mut all);
    let decoded: Vec<Vec<u8>> = all.iter().filter_map(|s| b64.decode(s).ok()).collect();
    assert!(!decoded.is_empty(), "the certificates are base64 PEM");
    for d in &decoded {
        let as_text = String::from_utf8_lossy(d);
        assert!(!as_text.contains("PRIVATE KEY"), "{as_text}");
        assert!(
            !d.windows(key_der.len()).any(|w| w == key_der),
            "the key's DER inside a base64 field"
        );
    }
}
