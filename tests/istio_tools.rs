//! End-to-end: what Istio's tools read from a running tunnel, in ztunnel's shapes.
//!
//! - `/config_dump` decodes into the types `istioctl ztunnel-config workloads|services|policies|
//!   certificates` unmarshals it into (mirrored below with their json tags), with the values of
//!   the mesh the control plane pushed and the certificates the CA issued;
//! - `/metrics` carries the labels Kiali and Istio's dashboards group by, counts a refused
//!   connection in `istio_tcp_connections_failed_total`, and reports `istio_build`;
//! - with `LOG_FORMAT=json` an access-log line is one JSON object with ztunnel's field names.
//!
//! Real `nodetunnel-control` (xDS + CA) and two real `nodetunnel` processes (dedicated mode) in
//! the standard two-node topology of tests/hbone.rs, traffic over HBONE through iptables
//! capture. Needs root; without it each test prints "skipped: needs root" (and fails under
//! CI=true).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::http_get;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, generate_ca, namespaces_available, port, spiffe_id,
    Capture, ControlPlane, Match, MeshConfig, Policy, Server, StringMatch, Topology, Tunnel,
};
use serde::Deserialize;

const SERVER_PORT: u16 = 8080;
/// A port of the server workload nothing listens on.
const CLOSED_PORT: u16 = 8099;
const DEADLINE: Duration = Duration::from_secs(15);
const ISTIO_VERSION: &str = "1.28.0";

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// The standard mesh with a DENY policy that matches nobody (so traffic flows, and the dump
/// has a policy with rules).
fn mesh_config() -> MeshConfig {
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies.push(
        Policy::deny("default", "deny-nobody").rule([[Match::default()
            .principal(StringMatch::exact("cluster.local/ns/default/sa/nobody"))
            .destination_port(SERVER_PORT)]]),
    );
    cfg
}

/// Kiali's names (canonical service and revision, owner) per workload, as istiod derives them
/// from a pod's labels and owner.
const CANONICAL: [(&str, &str, &str, &str); 2] = [
    ("client", "client-app", "v1", "client-deploy"),
    ("server", "server-app", "v2", "server-deploy"),
];

/// `cfg` as YAML with [`CANONICAL`]'s fields added to its workloads (the testbed's builder does
/// not write them), keyed on each workload's `uid` line.
fn mesh_yaml(cfg: &MeshConfig) -> String {
    let mut yaml = cfg.to_yaml();
    for (name, service, revision, owner) in CANONICAL {
        let uid = cfg
            .workloads
            .iter()
            .find(|w| w.name == name)
            .expect("a workload of the standard mesh")
            .uid();
        let line = format!("- uid: \"{uid}\"\n");
        assert!(yaml.contains(&line), "no {line:?} in:\n{yaml}");
        yaml = yaml.replace(
            &line,
            &format!(
                "{line}  canonicalName: \"{service}\"\n  canonicalRevision: \"{revision}\"\n  workloadName: \"{owner}\"\n"
            ),
        );
    }
    yaml
}

struct Running {
    topo: Topology,
    _cp: ControlPlane,
    t1: Tunnel,
    t2: Tunnel,
    _server: Server,
}

/// Control plane, both tunnels (with `extra` env) and the echo server on n2, or `None` when
/// this machine cannot run namespaced tests.
fn start(test: &str, extra: &[(&str, &str)]) -> Option<Running> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
    let mesh = topo.path("mesh.yaml");
    std::fs::write(&mesh, mesh_yaml(&mesh_config())).expect("writing the mesh file");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let control = nodetunnel_testbed::sibling_binary("nodetunnel-control")
        .expect("the nodetunnel-control binary");
    let cp = topo
        .start_control_plane("n1", &control, &mesh, &ca, &[])
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let tunnel = |node: &str| {
        topo.start_control_tunnel(node, bin(), &cp, extra)
            .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
    };
    let t2 = tunnel("n2");
    let t1 = tunnel("n1");
    let server = Server::start(
        topo.ns("n2"),
        (addr::SERVER, SERVER_PORT).into(),
        echo_handler,
    )
    .expect("the echo server");
    Some(Running {
        topo,
        _cp: cp,
        t1,
        t2,
        _server: server,
    })
}

impl Running {
    /// client → service VIP:80 → server:8080, one echo.
    fn echo_through_vip(&self) {
        let dst: SocketAddr = (addr::SERVICE_VIP, 80).into();
        let mut s = self
            .topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT, dst))
            .expect("connect to the VIP");
        echo_roundtrip(&mut s, b"kiali").expect("echo through the VIP");
    }
}

// ------------------------------------------------------- istioctl's types (configdump/api.go)

#[derive(Debug, Deserialize)]
struct ZtunnelDump {
    workloads: Vec<ZtunnelWorkload>,
    services: Vec<ZtunnelService>,
    policies: Vec<ZtunnelPolicy>,
    certificates: Vec<CertsDump>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelWorkload {
    uid: String,
    #[serde(rename = "workloadIps")]
    workload_ips: Vec<String>,
    protocol: String,
    name: String,
    namespace: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
    #[serde(rename = "workloadName")]
    workload_name: String,
    #[serde(rename = "canonicalName")]
    canonical_name: String,
    #[serde(rename = "canonicalRevision")]
    canonical_revision: String,
    #[serde(rename = "clusterId")]
    cluster_id: String,
    #[serde(rename = "trustDomain")]
    trust_domain: String,
    node: String,
    status: String,
    capacity: u32,
    #[serde(rename = "authorizationPolicies")]
    authorization_policies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelEndpoint {
    #[serde(rename = "workloadUid")]
    workload_uid: String,
    port: HashMap<u16, u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelService {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<String>,
    ports: HashMap<String, i64>,
    endpoints: HashMap<String, ZtunnelEndpoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyMatch {
    principals: Vec<StringMatchDump>,
    #[serde(rename = "destinationPorts")]
    destination_ports: Vec<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StringMatchDump {
    #[serde(rename = "Exact")]
    exact: String,
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
    root_certs: Vec<Cert>,
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

// ---------------------------------------------------------------------------- metrics text

/// The label pairs and values of every sample of `family` in `tunnel`'s `/metrics`.
fn samples(tunnel: &Tunnel, family: &str) -> Vec<(HashMap<String, String>, f64)> {
    let (status, body) = tunnel
        .ns()
        .run(|| http_get(port::METRICS, "/metrics"))
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of `family`'s samples whose labels include all of `want`.
fn total(tunnel: &Tunnel, family: &str, want: &[(&str, &str)]) -> f64 {
    samples(tunnel, family)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

// ---------------------------------------------------------------------------------- tests

#[test]
fn config_dump_decodes_as_istioctl_decodes_it() {
    let Some(run) = start("tools_dump", &[("ISTIO_META_ISTIO_VERSION", ISTIO_VERSION)]) else {
        return;
    };
    let cfg = mesh_config();
    let body = run.t2.admin_get("/config_dump").expect("GET /config_dump");
    let raw: serde_json::Value = serde_json::from_str(&body).expect("the dump is JSON");
    let dump: ZtunnelDump = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("istioctl's types cannot decode the dump ({e}): {raw:#}"));

    // workloads: every pushed workload, by uid, with the values istioctl prints.
    let uids: Vec<&str> = dump.workloads.iter().map(|w| w.uid.as_str()).collect();
    let mut want: Vec<String> = cfg.workloads.iter().map(|w| w.uid()).collect();
    want.sort();
    assert_eq!(uids, want, "workloads sorted by uid");
    let server = dump
        .workloads
        .iter()
        .find(|w| w.name == "server")
        .expect("the server workload");
    assert_eq!(server.namespace, "default");
    assert_eq!(server.workload_ips, [addr::SERVER.to_string()]);
    assert_eq!(server.protocol, "HBONE");
    assert_eq!(server.node, "n2");
    assert_eq!(server.status, "Healthy");
    assert_eq!(server.service_account, "server");
    assert_eq!(server.trust_domain, "cluster.local");
    assert_eq!(
        (
            server.canonical_name.as_str(),
            server.canonical_revision.as_str()
        ),
        ("server-app", "v2")
    );
    assert_eq!(server.workload_name, "server-deploy");
    assert!(!server.cluster_id.is_empty(), "clusterId is always written");
    assert_eq!(server.capacity, 1);
    assert!(server.authorization_policies.is_empty());

    // services: VIPs as network/ip, ports and endpoints as maps keyed by port and uid.
    assert_eq!(dump.services.len(), 1, "{:#}", raw["services"]);
    let svc = &dump.services[0];
    assert_eq!(
        (
            svc.name.as_str(),
            svc.namespace.as_str(),
            svc.hostname.as_str()
        ),
        ("server", "default", "server.default.svc.cluster.local")
    );
    assert_eq!(svc.vips, [format!("/{}", addr::SERVICE_VIP)]);
    assert_eq!(
        svc.ports,
        HashMap::from([("80".to_string(), i64::from(SERVER_PORT))])
    );
    let server_uid = cfg
        .workloads
        .iter()
        .find(|w| w.name == "server")
        .unwrap()
        .uid();
    let endpoint = svc
        .endpoints
        .get(&server_uid)
        .unwrap_or_else(|| panic!("no endpoint {server_uid}: {:#}", raw["services"]));
    assert_eq!(endpoint.workload_uid, server_uid);
    assert_eq!(endpoint.port, HashMap::from([(80, SERVER_PORT)]));

    // policies: scope and action spelled as ztunnel, rules nested rule → clause → match.
    assert_eq!(dump.policies.len(), 1, "{:#}", raw["policies"]);
    let p = &dump.policies[0];
    assert_eq!(
        (
            p.namespace.as_str(),
            p.name.as_str(),
            p.scope.as_str(),
            p.action.as_str()
        ),
        ("default", "deny-nobody", "Namespace", "Deny")
    );
    let m = &p.rules[0][0][0];
    assert_eq!(m.principals[0].exact, "cluster.local/ns/default/sa/nobody");
    assert_eq!(m.destination_ports, [SERVER_PORT]);

    // certificates: the server's, issued by the control plane's CA.
    let cert = dump
        .certificates
        .iter()
        .find(|c| c.identity == spiffe_id("default", "server"))
        .unwrap_or_else(|| panic!("no server certificate: {:#}", raw["certificates"]));
    assert_eq!(cert.state, "Available");
    assert!(
        !cert.cert_chain.is_empty() && !cert.root_certs.is_empty(),
        "{cert:?}"
    );
    for c in cert.cert_chain.iter().chain(&cert.root_certs) {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(&c.pem)
            .unwrap_or_else(|e| panic!("pem is not base64 ({e}): {}", c.pem));
        let pem = String::from_utf8(pem).expect("PEM text");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(
            !c.serial_number.is_empty() && c.serial_number.bytes().all(|b| b.is_ascii_digit()),
            "istioctl parses the serial in base 10: {}",
            c.serial_number
        );
        for t in [&c.valid_from, &c.expiration_time] {
            assert!(
                t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
                "{t}"
            );
        }
        assert!(c.valid_from < c.expiration_time, "{c:?}");
    }

    // ztunnel's version section, and our own sections under their own keys.
    assert_eq!(raw["version"]["istioVersion"], ISTIO_VERSION);
    assert_eq!(raw["xds"]["connected"], true, "{:#}", raw["xds"]);
    assert!(raw["certificateIssuances"].as_u64().is_some_and(|n| n >= 1));
    assert!(raw["pods"].is_array() && raw["workloadState"].is_object());
}

#[test]
fn metrics_carry_kialis_labels_count_failures_and_report_the_build() {
    let Some(run) = start(
        "tools_metrics",
        &[("ISTIO_META_ISTIO_VERSION", ISTIO_VERSION)],
    ) else {
        return;
    };
    run.echo_through_vip();

    let client_id = spiffe_id("default", "client");
    let server_id = spiffe_id("default", "server");
    let common = [
        ("source_workload", "client-deploy"),
        ("source_canonical_service", "client-app"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "default"),
        ("source_principal", client_id.as_str()),
        ("source_app", "client-app"),
        ("source_version", "v1"),
        ("destination_service", "server.default.svc.cluster.local"),
        ("destination_service_namespace", "default"),
        ("destination_service_name", "server"),
        ("destination_workload", "server-deploy"),
        ("destination_canonical_service", "server-app"),
        ("destination_canonical_revision", "v2"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", server_id.as_str()),
        ("destination_app", "server-app"),
        ("destination_version", "v2"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    // Both sides report the connection with the same labels, each as its reporter.
    for (tunnel, reporter) in [(&run.t1, "source"), (&run.t2, "destination")] {
        let mut want = common.to_vec();
        want.push(("reporter", reporter));
        assert_eventually!(
            total(tunnel, "istio_tcp_connections_closed_total", &want) == 1.0,
            DEADLINE,
            "{reporter}: no closed connection with {want:?} in {:#?}",
            samples(tunnel, "istio_tcp_connections_closed_total")
        );
        assert_eq!(
            total(tunnel, "istio_tcp_connections_opened_total", &want),
            1.0,
            "{reporter}"
        );
        let (labels, _) = samples(tunnel, "istio_tcp_connections_opened_total")
            .into_iter()
            .find(|(l, _)| l.get("reporter").map(String::as_str) == Some(reporter))
            .expect("an opened sample");
        for cluster in ["source_cluster", "destination_cluster"] {
            assert!(
                labels
                    .get(cluster)
                    .is_some_and(|c| !c.is_empty() && c != "unknown"),
                "{reporter}: {cluster} in {labels:?}"
            );
        }
        assert_eq!(
            total(
                tunnel,
                "istio_build",
                &[("component", "ztunnel"), ("tag", ISTIO_VERSION)]
            ),
            1.0,
            "{reporter}: istio_build"
        );
    }
    assert_eq!(
        total(&run.t2, "istio_tcp_connections_failed_total", &[]),
        0.0,
        "nothing failed yet"
    );

    // A connection to a port of the server nothing listens on: the server's tunnel is refused
    // by the app's address, the client's tunnel by the peer.
    let dst: SocketAddr = (addr::SERVER, CLOSED_PORT).into();
    let got = run.topo.ns("n1").run(move || -> std::io::Result<Vec<u8>> {
        let mut s = connect_from(addr::CLIENT, dst)?;
        s.set_read_timeout(Some(DEADLINE))?;
        nodetunnel_testbed::traffic::request_then_read_all(&mut s, b"anyone?\n")
    });
    assert!(
        got.as_ref().map_or(true, Vec::is_empty),
        "no bytes from a closed port: {got:?}"
    );
    for (tunnel, reporter) in [(&run.t2, "destination"), (&run.t1, "source")] {
        let want = [
            ("reporter", reporter),
            ("destination_workload", "server-deploy"),
            ("source_principal", client_id.as_str()),
        ];
        assert_eventually!(
            total(tunnel, "istio_tcp_connections_failed_total", &want) == 1.0,
            DEADLINE,
            "{reporter}: the refused connection is not counted: {:#?}",
            samples(tunnel, "istio_tcp_connections_failed_total")
        );
        let failed = samples(tunnel, "istio_tcp_connections_failed_total");
        assert!(
            failed
                .iter()
                .all(|(l, _)| l.get("response_flags").is_some_and(|f| f == "CONNECT")),
            "{reporter}: a refused connection carries ztunnel's CONNECT flag: {failed:?}"
        );
    }
}

#[test]
fn json_access_log_lines_use_ztunnels_field_names() {
    let Some(run) = start("tools_json_log", &[("LOG_FORMAT", "json")]) else {
        return;
    };
    run.echo_through_vip();
    let access_line = |tunnel: &Tunnel, direction: &str| -> Option<serde_json::Value> {
        tunnel
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["scope"] == "access" && v["direction"] == direction)
    };
    let mut lines = Vec::new();
    for (tunnel, direction) in [(&run.t1, "outbound"), (&run.t2, "inbound")] {
        assert_eventually!(
            access_line(tunnel, direction).is_some(),
            DEADLINE,
            "no JSON access line for {direction}:\n{}",
            tunnel.log_tail(20)
        );
        lines.push(access_line(tunnel, direction).unwrap());
    }
    let server = format!("{}:{SERVER_PORT}", addr::SERVER);
    let (out, inb) = (&lines[0], &lines[1]);
    for (line, what) in [(out, "outbound"), (inb, "inbound")] {
        assert_eq!(line["level"], "info", "{what}: {line}");
        assert_eq!(line["message"], "connection complete", "{what}: {line}");
        assert!(
            line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert_eq!(line["src.workload"], "client-deploy", "{what}: {line}");
        assert_eq!(line["src.namespace"], "default", "{what}: {line}");
        assert_eq!(
            line["src.identity"],
            spiffe_id("default", "client"),
            "{line}"
        );
        assert_eq!(line["dst.workload"], "server-deploy", "{what}: {line}");
        assert_eq!(line["dst.namespace"], "default", "{what}: {line}");
        assert_eq!(
            line["dst.identity"],
            spiffe_id("default", "server"),
            "{line}"
        );
        assert_eq!(
            line["dst.service"], "server.default.svc.cluster.local",
            "{what}: {line}"
        );
        assert!(
            line["src.addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.77.1.10:")),
            "{line}"
        );
        assert!(
            line["bytes_sent"].is_u64() && line["bytes_recv"].is_u64(),
            "{line}"
        );
        assert!(
            line["duration"].as_str().is_some_and(|d| d.ends_with("ms")),
            "{line}"
        );
        assert!(
            line["src.cluster"].is_string() && line["dst.cluster"].is_string(),
            "{line}"
        );
    }
    assert_eq!(out["dst.hbone_addr"], server, "{out}");
    assert_eq!(inb["dst.addr"], server, "{inb}");
    assert_eq!(out["bytes_sent"], 5, "the echo's 5 bytes: {out}");
}
