//! `nodetunnel-control` end to end: the real binary on loopback, a raw tonic delta xDS client
//! over real TLS (trusting the root the binary writes), and its status endpoints over HTTP.
//! No fixed sleeps: every wait polls with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodetunnel::grpc::GrpcTarget;
use nodetunnel::identity::CaClient;
use nodetunnel::identity::Identity;
use nodetunnel_proto::envoy::config::core::v3::Node;
use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use nodetunnel_proto::google::rpc::Status as RpcStatus;
use nodetunnel_proto::istio::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use nodetunnel_proto::istio::auth::IstioCertificateRequest;
use nodetunnel_proto::istio::workload::{address, Address};
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Streaming};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const DEADLINE: Duration = Duration::from_secs(30);
/// Bound to node1 in the token file, as is every workload unless a test moves it.
const TOKEN: &str = "s3cret-node-token";
/// Bound to node2.
const TOKEN_NODE2: &str = "s3cret-node2-token";
const NODE_ID: &str = "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local";

// ---------------------------------------------------------------------------------------------
// The mesh file

/// A workload in `default` with service account = name, scheduled on `node`, backing `web`
/// when `web` is set.
#[derive(Clone)]
struct W {
    name: String,
    ip: String,
    node: String,
    web: bool,
}

/// A workload on node1.
fn w(name: &str, ip: &str) -> W {
    W {
        name: name.into(),
        ip: ip.into(),
        node: "node1".into(),
        web: false,
    }
}

/// A workload on `node`.
fn w_on(name: &str, ip: &str, node: &str) -> W {
    W {
        node: node.into(),
        ..w(name, ip)
    }
}

fn uid(name: &str) -> String {
    format!("cluster1//v1/Pod/default/{name}")
}

fn mesh_yaml(workloads: &[W], with_service: bool) -> String {
    let mut y = String::new();
    if workloads.is_empty() {
        y.push_str("workloads: []\n");
    } else {
        y.push_str("workloads:\n");
    }
    for w in workloads {
        let _ = writeln!(y, "- uid: \"{}\"", uid(&w.name));
        let _ = writeln!(y, "  name: {}", w.name);
        let _ = writeln!(y, "  namespace: default");
        let _ = writeln!(y, "  serviceAccount: {}", w.name);
        let _ = writeln!(y, "  workloadIps: [\"{}\"]", w.ip);
        let _ = writeln!(y, "  protocol: HBONE");
        let _ = writeln!(y, "  node: {}", w.node);
        if w.web {
            y.push_str(
                "  services:\n    \"default/web.default.svc.cluster.local\":\n      80: 8080\n",
            );
        }
    }
    if with_service {
        y.push_str(
            "services:\n- name: web\n  namespace: default\n  hostname: web.default.svc.cluster.local\n  vips: [\"/10.96.0.10\"]\n  ports:\n    80: 8080\n",
        );
    }
    y
}

const WEB: &str = "default/web.default.svc.cluster.local";

/// Replaces the file the way editors and `kubectl cp` do: write aside, rename over.
fn write_mesh(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The control plane process

struct Control {
    dir: tempfile::TempDir,
    child: Child,
    grpc: SocketAddr,
    status: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Control {
    fn mesh_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root-cert.pem")
    }

    /// Starts the binary on loopback with a token file and waits for its "serving" line.
    fn start(yaml: &str) -> Control {
        Control::start_with(yaml, &[])
    }

    /// [`Control::start`] with extra environment variables (settings).
    fn start_with(yaml: &str, env: &[(&str, &str)]) -> Control {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            format!("{TOKEN} node=node1 node-tunnels\n{TOKEN_NODE2} node=node2 tunnel-2\n"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodetunnel-control"))
            .arg("--mesh")
            .arg(dir.path().join("mesh.yaml"))
            .args(["--listen", "127.0.0.1:0", "--status-addr", "127.0.0.1:0"])
            .arg("--token-file")
            .arg(dir.path().join("tokens"))
            .arg("--write-root")
            .arg(dir.path().join("root-cert.pem"))
            .env("RUST_LOG", "info,nodetunnel_control=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving xDS and CA on") {
                    let _ = tx.send(line.clone());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("control plane did not start:\n{}", logs.lock().unwrap());
            }
        };
        let grpc = word_after(&line, "serving xDS and CA on ").parse().unwrap();
        let status = word_after(&line, "status=").parse().unwrap();
        Control {
            dir,
            child,
            grpc,
            status,
            logs,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Replaces the token file the way Kubernetes updates a mounted secret: a new file renamed
    /// over the old one (a new inode, so the change shows whatever the mtime resolution).
    fn write_tokens(&self, text: &str) {
        let path = self.dir.path().join("tokens");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// `CreateCertificate` over TLS with `Bearer <token>`, impersonating `default/<sa>`: the
    /// leaf's URI SAN, or the refusal.
    async fn sign(&self, token: &str, sa: &str) -> Result<String, tonic::Status> {
        let identity = Identity::new("cluster.local", "default", sa);
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 600,
            metadata: Some(prost_types::Struct {
                fields: [(
                    "ImpersonatedIdentity".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            }),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let response = IstioCertificateServiceClient::new(self.channel().await)
            .create_certificate(request)
            .await?
            .into_inner();
        let leaf = response.cert_chain.first().expect("a chain");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris.len(), 1, "{uris:?}");
        Ok(uris[0].clone())
    }

    async fn channel(&self) -> Channel {
        let root = std::fs::read(self.root()).unwrap();
        Channel::from_shared(format!("https://{}", self.grpc))
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A delta ADS stream authenticated with `token` (none when `None`).
    async fn stream(&self, token: Option<&str>) -> Result<Xds, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        // The tunnel's limit: a first response carries the whole mesh in one message.
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel().await)
            .max_decoding_message_size(256 << 20);
        let responses = client
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Xds { tx, responses })
    }

    async fn xds(&self) -> Xds {
        self.stream(Some(TOKEN)).await.unwrap()
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.status, path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls `/debug/mesh` until `done` holds.
    async fn wait_mesh(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let mesh = self.get_json("/debug/mesh");
            if done(&mesh) {
                return mesh;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {mesh:#}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let at = line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in {line:?}"));
    line[at + marker.len()..].split_whitespace().next().unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

// ---------------------------------------------------------------------------------------------
// A raw delta xDS client

struct Xds {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Xds {
    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    /// A type's first request: wildcard, with the versions held from a previous stream.
    async fn subscribe(&self, type_url: &str, held: &HashMap<String, String>) {
        self.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: NODE_ID.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            initial_resource_versions: held.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(DEADLINE, self.responses.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("stream closed"),
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Err(_) => panic!("no response within {DEADLINE:?}"),
        }
    }

    /// The stream's terminal status.
    async fn recv_error(&mut self) -> tonic::Status {
        match tokio::time::timeout(DEADLINE, self.responses.message()).await {
            Ok(Err(status)) => status,
            Ok(other) => panic!("expected an error, got {other:?}"),
            Err(_) => panic!("no error within {DEADLINE:?}"),
        }
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: Code::InvalidArgument as i32,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    /// Subscribes to both types and collects the initial state: name → version per type.
    /// Every response is ACKed.
    async fn sync(&mut self, held: &HashMap<String, String>) -> Synced {
        self.subscribe(WORKLOAD_ADDRESS_TYPE_URL, held).await;
        let addresses = self.recv().await;
        assert_eq!(addresses.type_url, WORKLOAD_ADDRESS_TYPE_URL);
        self.ack(&addresses).await;
        self.subscribe(AUTHORIZATION_TYPE_URL, &HashMap::new())
            .await;
        let policies = self.recv().await;
        assert_eq!(policies.type_url, AUTHORIZATION_TYPE_URL);
        self.ack(&policies).await;
        Synced {
            addresses,
            policies,
        }
    }
}

struct Synced {
    addresses: DeltaDiscoveryResponse,
    policies: DeltaDiscoveryResponse,
}

fn versions(response: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names: Vec<_> = response.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

fn decode(response: &DeltaDiscoveryResponse, name: &str) -> Address {
    let resource = response
        .resources
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", names(response)));
    let any = resource.resource.as_ref().unwrap();
    assert_eq!(any.type_url, WORKLOAD_ADDRESS_TYPE_URL);
    Address::decode(any.value.as_slice()).unwrap()
}

fn three_workloads() -> Vec<W> {
    let mut a = w("a", "10.0.0.1");
    a.web = true;
    vec![a, w("b", "10.0.0.2"), w("c", "10.0.0.3")]
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn initial_sync_sends_every_resource_of_both_types() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    let mut xds = cp.xds().await;
    let synced = xds.sync(&HashMap::new()).await;

    let mut want = vec![uid("a"), uid("b"), uid("c"), WEB.to_string()];
    want.sort();
    assert_eq!(names(&synced.addresses), want);
    assert!(synced.addresses.removed_resources.is_empty());
    for r in &synced.addresses.resources {
        assert_eq!(r.version.len(), 16, "content-hash version: {r:?}");
    }
    match decode(&synced.addresses, &uid("a")).r#type {
        Some(address::Type::Workload(w)) => {
            assert_eq!(w.name, "a");
            assert_eq!(w.addresses, vec![vec![10u8, 0, 0, 1]]);
            assert!(w.services.contains_key(WEB), "{:?}", w.services);
        }
        other => panic!("expected a workload, got {other:?}"),
    }
    match decode(&synced.addresses, WEB).r#type {
        Some(address::Type::Service(s)) => assert_eq!(s.hostname, "web.default.svc.cluster.local"),
        other => panic!("expected a service, got {other:?}"),
    }
    // No policies: still one (empty) Authorization response, so the client knows it is synced.
    assert!(synced.policies.resources.is_empty());
    assert!(synced.policies.removed_resources.is_empty());
    assert!(!synced.policies.nonce.is_empty());
    assert_ne!(synced.policies.nonce, synced.addresses.nonce);

    // The connection shows up with its node id, caller and counts; the ACKs are recorded.
    let start = Instant::now();
    loop {
        let conns = cp.get_json("/debug/connections");
        let c = &conns["connections"][0];
        if c["types"]["Authorization"]["last_acked_nonce"] == synced.policies.nonce.as_str() {
            assert_eq!(c["node_id"], NODE_ID);
            assert_eq!(c["caller"], "token:node-tunnels");
            assert_eq!(c["bound_node"], "node1");
            assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
            assert_eq!(c["types"]["Address"]["resources_sent"], 4);
            assert_eq!(
                c["types"]["Address"]["last_acked_nonce"],
                synced.addresses.nonce.as_str()
            );
            assert_eq!(c["types"]["Address"]["wildcard"], true);
            break;
        }
        assert!(start.elapsed() < DEADLINE, "ACKs never recorded: {conns:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mesh = cp.get_json("/debug/mesh");
    assert_eq!(mesh["generation"], 1);
    assert_eq!(mesh["resources"]["Address"], 4);
    assert_eq!(mesh["resources"]["Authorization"], 0);
    assert_eq!(mesh["identities"], 3);
    let (code, body) = http_get(cp.status, "/ready");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn an_edit_pushes_only_the_changed_workload_and_removals() {
    let workloads = three_workloads();
    let cp = Control::start(&mesh_yaml(&workloads, true));
    let mut xds = cp.xds().await;
    let synced = xds.sync(&HashMap::new()).await;
    let before = versions(&synced.addresses);

    // Move b to a new IP: exactly one resource comes, b, at a new version.
    let mut edited = workloads.clone();
    edited[1].ip = "10.0.1.2".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let push = xds.recv().await;
    assert_eq!(push.type_url, WORKLOAD_ADDRESS_TYPE_URL);
    assert_eq!(
        names(&push),
        vec![uid("b")],
        "only the changed workload is pushed"
    );
    assert!(push.removed_resources.is_empty());
    assert_ne!(push.resources[0].version, before[&uid("b")]);
    match decode(&push, &uid("b")).r#type {
        Some(address::Type::Workload(w)) => assert_eq!(w.addresses, vec![vec![10u8, 0, 1, 2]]),
        other => panic!("expected a workload, got {other:?}"),
    }
    xds.ack(&push).await;

    // Remove c: it arrives in removed_resources, with nothing else.
    edited.remove(2);
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let push = xds.recv().await;
    assert_eq!(push.type_url, WORKLOAD_ADDRESS_TYPE_URL);
    assert!(push.resources.is_empty(), "{:?}", names(&push));
    assert_eq!(push.removed_resources, vec![uid("c")]);
    xds.ack(&push).await;

    // A comment-only edit changes no resource: a new generation, but nothing is pushed. The
    // next real change proves it: the first response after it carries only that change.
    write_mesh(
        &cp.mesh_path(),
        &format!("# reviewed\n{}", mesh_yaml(&edited, true)),
    );
    cp.wait_mesh("generation 4", |m| m["generation"] == 4).await;
    edited.push(w("d", "10.0.0.4"));
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let push = xds.recv().await;
    assert_eq!(names(&push), vec![uid("d")]);
    assert!(push.removed_resources.is_empty());
}

#[tokio::test]
async fn reconnecting_with_initial_versions_gets_only_the_differences() {
    let workloads = three_workloads();
    let cp = Control::start(&mesh_yaml(&workloads, true));
    let mut first = cp.xds().await;
    let held = versions(&first.sync(&HashMap::new()).await.addresses);
    drop(first);

    // While the tunnel is away: b changes, c goes, d arrives.
    let mut edited = workloads.clone();
    edited[1].ip = "10.0.1.2".into();
    edited.remove(2);
    edited.push(w("d", "10.0.0.4"));
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    cp.wait_mesh("generation 2", |m| m["generation"] == 2).await;

    let mut held_plus = held.clone();
    held_plus.insert(
        "default/ghost.default.svc.cluster.local".into(),
        "0123456789abcdef".into(),
    );
    held_plus.insert(uid("a"), held[&uid("a")].clone());
    let mut again = cp.xds().await;
    let synced = again.sync(&held_plus).await;
    assert_eq!(names(&synced.addresses), vec![uid("b"), uid("d")]);
    let mut removed = synced.addresses.removed_resources.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            uid("c"),
            "default/ghost.default.svc.cluster.local".to_string()
        ]
    );

    // Holding everything at the current versions: an empty (but present) initial response.
    let mut current = held.clone();
    current.extend(versions(&synced.addresses));
    current.remove(&uid("c"));
    let mut third = cp.xds().await;
    let synced = third.sync(&current).await;
    assert!(
        synced.addresses.resources.is_empty(),
        "{:?}",
        names(&synced.addresses)
    );
    assert!(synced.addresses.removed_resources.is_empty());
}

#[tokio::test]
async fn a_nack_is_logged_counted_and_shown_with_its_message() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    let mut xds = cp.xds().await;
    xds.subscribe(WORKLOAD_ADDRESS_TYPE_URL, &HashMap::new())
        .await;
    let response = xds.recv().await;
    xds.nack(&response, "workload a: address 10.0.0.1 already in use")
        .await;

    let start = Instant::now();
    let conn = loop {
        let conns = cp.get_json("/debug/connections");
        let c = conns["connections"][0].clone();
        if c["types"]["Address"]["nack_count"] == 1 {
            break c;
        }
        assert!(start.elapsed() < DEADLINE, "NACK never recorded: {conns:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let nack = &conn["types"]["Address"]["last_nack"];
    assert_eq!(
        nack["message"],
        "workload a: address 10.0.0.1 already in use"
    );
    assert_eq!(nack["nonce"], response.nonce.as_str());
    assert_eq!(conn["node_id"], NODE_ID);
    let logs = cp.logs();
    assert!(
        logs.lines().any(|l| l.contains("NACK")
            && l.contains(NODE_ID)
            && l.contains(&response.nonce)
            && l.contains("already in use")),
        "the warning names node, nonce and message:\n{logs}"
    );
    // The NACKed versions are not resent: the next push carries only the next change.
    let mut edited = three_workloads();
    edited[2].ip = "10.0.2.3".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let push = xds.recv().await;
    assert_eq!(names(&push), vec![uid("c")]);
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_refused_with_the_reason() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    for (token, what) in [(None, "no token"), (Some("not-the-token"), "wrong token")] {
        let status = match cp.stream(token).await {
            Err(status) => status,
            Ok(mut xds) => {
                // Some transports report the refusal on the first read instead.
                xds.subscribe(WORKLOAD_ADDRESS_TYPE_URL, &HashMap::new())
                    .await;
                xds.recv_error().await
            }
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains("token"),
            "{what}: reason given: {status:?}"
        );
    }
    assert!(cp.get_json("/debug/connections")["connections"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_first_request_without_a_node_is_invalid() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), false));
    let mut xds = cp.xds().await;
    xds.send(DeltaDiscoveryRequest {
        type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
        ..Default::default()
    })
    .await;
    let status = xds.recv_error().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("node"), "{status:?}");

    // State-of-the-world ADS is refused plainly.
    let mut client = AggregatedDiscoveryServiceClient::new(cp.channel().await);
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let status = match client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Err(status) => status,
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("delta"), "{status:?}");
}

#[tokio::test]
async fn a_bad_edit_keeps_the_previous_mesh_and_is_reported() {
    let workloads = three_workloads();
    let cp = Control::start(&mesh_yaml(&workloads, true));
    let mut xds = cp.xds().await;
    xds.sync(&HashMap::new()).await;

    write_mesh(
        &cp.mesh_path(),
        "workloads:\n- uid: \"x\"\n  workloadIps: [\"not-an-ip\"\n",
    );
    let mesh = cp
        .wait_mesh("the load error", |m| !m["last_error"].is_null())
        .await;
    let error = mesh["last_error"].as_str().unwrap();
    assert!(
        error.contains("mesh.yaml:"),
        "names file and position: {error}"
    );
    assert_eq!(mesh["generation"], 1);
    assert_eq!(mesh["resources"]["Address"], 4);

    // A new tunnel still gets the last good mesh.
    let mut late = cp.xds().await;
    assert_eq!(
        late.sync(&HashMap::new()).await.addresses.resources.len(),
        4
    );

    // Fixing the file clears the error; the first push after the bad edit is the real change.
    let mut fixed = workloads.clone();
    fixed[0].ip = "10.0.9.1".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&fixed, true));
    let push = xds.recv().await;
    assert_eq!(names(&push), vec![uid("a")]);
    let mesh = cp.wait_mesh("generation 2", |m| m["generation"] == 2).await;
    assert!(mesh["last_error"].is_null(), "{mesh:#}");
    assert_eq!(mesh["failed_loads"], 1);
}

#[tokio::test]
async fn first_response_is_whole_and_later_large_pushes_are_split() {
    // ~40,000 workloads are well over one 4 MiB response (gRPC's common receive limit).
    let at = |i: u32, net: u32| format!("10.{}.{}.{}", net + (i >> 16), (i >> 8) & 255, i & 255);
    let many: Vec<W> = (0..40_000u32)
        .map(|i| w(&format!("pod-{i:05}"), &at(i, 0)))
        .collect();
    let cp = Control::start(&mesh_yaml(&many, false));
    let mut xds = cp.xds().await;
    xds.subscribe(WORKLOAD_ADDRESS_TYPE_URL, &HashMap::new())
        .await;
    // The first response holds everything: clients take it as "in sync".
    let first = xds.recv().await;
    assert_eq!(
        first.resources.len(),
        many.len(),
        "the first response is whole"
    );
    assert!(first.encoded_len() > 4 * 1024 * 1024);
    xds.ack(&first).await;

    // Every workload moves: this push is split under the limit, one nonce per response.
    let moved: Vec<W> = (0..40_000u32)
        .map(|i| w(&format!("pod-{i:05}"), &at(i, 100)))
        .collect();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&moved, false));
    let mut got = BTreeMap::new();
    let mut nonces = Vec::new();
    while got.len() < many.len() {
        let r = xds.recv().await;
        assert_eq!(r.type_url, WORKLOAD_ADDRESS_TYPE_URL);
        assert!(r.encoded_len() <= 4 * 1024 * 1024);
        xds.ack(&r).await;
        nonces.push(r.nonce.clone());
        for res in r.resources {
            assert!(got.insert(res.name, res.version).is_none(), "sent once");
        }
    }
    assert!(nonces.len() >= 2, "split into {} responses", nonces.len());
    let total = nonces.len();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), total, "one nonce per response");
    assert_eq!(got.len(), many.len());

    // Reconnecting while holding all of them plus 30,000 stale names: a first request well over
    // 4 MiB, answered with no resources and every stale name removed.
    let mut held: HashMap<String, String> = got.into_iter().collect();
    let stale: Vec<String> = (0..30_000)
        .map(|i| format!("cluster1//v1/Pod/default/{}-{i:05}", "gone".repeat(20)))
        .collect();
    for name in &stale {
        held.insert(name.clone(), "0123456789abcdef".into());
    }
    let mut again = cp.xds().await;
    again.subscribe(WORKLOAD_ADDRESS_TYPE_URL, &held).await;
    let mut removed = Vec::new();
    while removed.len() < stale.len() {
        let r = again.recv().await;
        assert!(
            r.resources.is_empty(),
            "{} resources resent",
            r.resources.len()
        );
        removed.extend(r.removed_resources);
    }
    removed.sort();
    assert_eq!(removed, stale);
}

#[tokio::test]
async fn the_ca_signs_only_identities_in_the_current_mesh() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), false));
    let token = cp.dir.path().join("client-token");
    std::fs::write(&token, TOKEN).unwrap();
    let ca = CaClient::new(GrpcTarget {
        address: format!("https://{}", cp.grpc),
        root_cert: Some(cp.root()),
        token: Some(token),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    })
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let a = Identity::new("cluster.local", "default", "a");
    let chain = ca.sign(&csr, &a, Duration::from_secs(3600)).await.unwrap();
    assert!(chain.len() >= 2, "leaf and root");
    let stranger = Identity::new("cluster.local", "default", "stranger");
    let err = ca
        .sign(&csr, &stranger, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stranger"), "{err}");

    // Removing a from the mesh revokes its right to new certificates.
    write_mesh(&cp.mesh_path(), &mesh_yaml(&[w("b", "10.0.0.2")], false));
    cp.wait_mesh("generation 2", |m| m["generation"] == 2).await;
    assert!(ca.sign(&csr, &a, Duration::from_secs(3600)).await.is_err());
}

#[tokio::test]
async fn sigterm_closes_streams_and_exits_zero() {
    let mut cp = Control::start(&mesh_yaml(&three_workloads(), false));
    let mut xds = cp.xds().await;
    xds.sync(&HashMap::new()).await;
    let pid = nix::unistd::Pid::from_raw(cp.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = xds.recv_error().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = cp.child.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed() < DEADLINE, "did not exit:\n{}", cp.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exit.success(), "{exit:?}\n{}", cp.logs());
}

#[test]
fn bad_input_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nodetunnel-control"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let missing = dir.path().join("nope.yaml");
    let (status, err) = run(&[
        "--mesh",
        missing.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("nope.yaml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "workloads:\n  - name: [\n").unwrap();
    let (status, err) = run(&[
        "--mesh",
        bad.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("bad.yaml:"), "file:line:column: {err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "workloads: []\n").unwrap();
    let bad_ca = dir.path().join("ca");
    std::fs::create_dir(&bad_ca).unwrap();
    std::fs::write(bad_ca.join("ca-cert.pem"), "not a pem").unwrap();
    let (status, err) = run(&[
        "--mesh",
        good.to_str().unwrap(),
        "--ca-dir",
        bad_ca.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("ca-cert.pem") || err.contains(bad_ca.to_str().unwrap()),
        "{err}"
    );

    let (status, err) = run(&["--mesh", good.to_str().unwrap(), "--listen", "nowhere"]);
    assert_eq!(status.code(), Some(2), "clap usage error: {err}");
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test]
async fn an_empty_ca_dir_gets_a_new_root_that_later_runs_load() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "workloads: []\n").unwrap();
    let ca_dir = dir.path().join("ca");
    let root = |n: u32| dir.path().join(format!("root{n}.pem"));
    for n in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodetunnel-control"))
            .arg("--mesh")
            .arg(&mesh)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--write-root")
            .arg(root(n))
            .args(["--listen", "127.0.0.1:0", "--status-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let start = Instant::now();
        while !lines
            .next()
            .unwrap()
            .unwrap()
            .contains("serving xDS and CA on")
        {
            assert!(start.elapsed() < DEADLINE);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(ca_dir.join(file).is_file(), "{file} written");
    }
    let first = std::fs::read_to_string(root(0)).unwrap();
    assert!(first.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        first,
        std::fs::read_to_string(root(1)).unwrap(),
        "the second run loaded the same root"
    );
}

/// In-process (the binary's 30 s patience is too long for a test): a client that subscribes and
/// then never reads is dropped once the server cannot queue more for it, and its entry leaves
/// `/debug/connections`' registry; a client that reads on is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped() {
    use nodetunnel::identity::LocalCa;
    use nodetunnel::state::Defaults;
    use nodetunnel_control::auth::Authenticator;
    use nodetunnel_control::connections::Connections;
    use nodetunnel_control::watch::MeshWatcher;
    use nodetunnel_control::xds_server::{AdsServer, StreamLimits};
    use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
    use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    // ~1.5 MB of resources: more than the client's 64 KiB window, the server's HTTP/2 send
    // buffer and the response queue together.
    let many: Vec<W> = (0..8_000u32)
        .map(|i| {
            w(
                &format!("pod-{i:05}"),
                &format!("10.1.{}.{}", i >> 8, i & 255),
            )
        })
        .collect();
    std::fs::write(&path, mesh_yaml(&many, false)).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} node=node1 test\n")).unwrap();

    let watcher = MeshWatcher::start(path.clone(), Defaults::default())
        .await
        .unwrap();
    let ca = LocalCa::generate("cluster.local").unwrap();
    let serving = ca
        .issue_serving_cert(&["127.0.0.1".into()], Duration::from_secs(3600))
        .unwrap();
    let connections = Arc::new(Connections::default());
    let ads = AdsServer::new(
        watcher.subscribe(),
        Arc::new(Authenticator::new(Some(tokens), false)),
        connections.clone(),
        tokio_util::sync::CancellationToken::new(),
        StreamLimits {
            max_response_bytes: 8 * 1024,
            // Long enough that the reader, which reads in a loop, is never taken for stalled
            // on a loaded 2-core machine (300 ms was not); the stalled client still goes well
            // within DEADLINE.
            slow_client_timeout: Duration::from_secs(3),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(
        &serving.cert_chain_pem,
        &serving.key_pem,
    ));
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let connect = || async {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.root_pem())))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(request)
            .await
            .unwrap()
            .into_inner();
        let xds = Xds { tx, responses };
        xds.subscribe(WORKLOAD_ADDRESS_TYPE_URL, &HashMap::new())
            .await;
        xds
    };

    let mut reader = connect().await;
    let first = reader.recv().await;
    assert_eq!(
        first.resources.len(),
        many.len(),
        "the first response is whole"
    );
    let mut stalled = connect().await;

    // Every workload moves: a push split into many small responses, which the stalled client
    // (still sitting on its first response) cannot take. The reader keeps up and gets
    // everything; meanwhile the stalled client is dropped.
    let moved: Vec<W> = (0..8_000u32)
        .map(|i| {
            w(
                &format!("pod-{i:05}"),
                &format!("10.2.{}.{}", i >> 8, i & 255),
            )
        })
        .collect();
    write_mesh(&path, &mesh_yaml(&moved, false));
    let mut read = 0;
    while read < many.len() {
        read += reader.recv().await.resources.len();
    }
    let start = Instant::now();
    while connections.len() != 1 {
        assert!(
            start.elapsed() < DEADLINE,
            "stalled client never dropped: {:#?}",
            connections.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Once it does read, it finds what was queued and then why it was dropped.
    let status = loop {
        match tokio::time::timeout(DEADLINE, stalled.responses.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => break status,
            other => panic!("expected the drop status, got {other:?}"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// Versions are content hashes, not counters: a tunnel that reconnects to a restarted control
/// plane serving the same file is sent nothing (istiod behaves the same since it versions WDS
/// resources by content).
#[tokio::test]
async fn versions_survive_a_control_plane_restart() {
    let yaml = mesh_yaml(&three_workloads(), true);
    let first = Control::start(&yaml);
    let held = versions(&first.xds().await.sync(&HashMap::new()).await.addresses);
    drop(first);
    let second = Control::start(&yaml);
    let synced = second.xds().await.sync(&held).await;
    assert!(
        synced.addresses.resources.is_empty(),
        "{:?}",
        names(&synced.addresses)
    );
    assert!(synced.addresses.removed_resources.is_empty());
}

/// Explicit names (not wildcard) get only those names; a name the mesh lacks comes back as a
/// removal, delta xDS's "does not exist".
#[tokio::test]
async fn explicit_subscriptions_get_only_their_names() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    let mut xds = cp.xds().await;
    xds.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: NODE_ID.into(),
            ..Default::default()
        }),
        type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec![uid("a"), "default/missing".into()],
        ..Default::default()
    })
    .await;
    let r = xds.recv().await;
    assert_eq!(names(&r), vec![uid("a")]);
    assert_eq!(r.removed_resources, vec!["default/missing".to_string()]);
    xds.ack(&r).await;

    // A change to a workload outside the subscription is not pushed; one inside is.
    let mut edited = three_workloads();
    edited[1].ip = "10.0.1.2".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    cp.wait_mesh("generation 2", |m| m["generation"] == 2).await;
    edited[0].ip = "10.0.1.1".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let r = xds.recv().await;
    assert_eq!(names(&r), vec![uid("a")]);
}

// ---------------------------------------------------------------------------------------------
// Node-bound tokens: the CA as a node's tunnel meets it

const SPIFFE_DEFAULT: &str = "spiffe://cluster.local/ns/default/sa/";

/// The refusal a token bound to `node` gets for `sa`, which runs on `runs_on`.
fn other_node_refusal(label: &str, node: &str, sa: &str, runs_on: &str) -> String {
    format!(
        "token \"{label}\" is bound to node \"{node}\", and no workload on \"{node}\" runs as \
         {SPIFFE_DEFAULT}{sa} (its workloads are on \"{runs_on}\")"
    )
}

fn assert_denied(result: Result<String, tonic::Status>, message: &str) {
    let status = result.expect_err("should be refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), message);
    for token in [TOKEN, TOKEN_NODE2] {
        assert!(
            !status.message().contains(token),
            "token echoed: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_node_token_gets_certificates_only_for_workloads_on_its_node() {
    let cp = Control::start(&mesh_yaml(
        &[w("a", "10.0.0.1"), w_on("b", "10.0.0.2", "node2")],
        false,
    ));
    // Each node's token: its own workload's identity is issued.
    assert_eq!(
        cp.sign(TOKEN, "a").await.unwrap(),
        format!("{SPIFFE_DEFAULT}a")
    );
    assert_eq!(
        cp.sign(TOKEN_NODE2, "b").await.unwrap(),
        format!("{SPIFFE_DEFAULT}b")
    );
    // The other node's workload: PERMISSION_DENIED naming identity, node and label.
    assert_denied(
        cp.sign(TOKEN, "b").await,
        &other_node_refusal("node-tunnels", "node1", "b", "node2"),
    );
    assert_denied(
        cp.sign(TOKEN_NODE2, "a").await,
        &other_node_refusal("tunnel-2", "node2", "a", "node1"),
    );
    // No such workload anywhere: refused for every node.
    for token in [TOKEN, TOKEN_NODE2] {
        assert_denied(
            cp.sign(token, "nobody").await,
            &format!("no workload in the mesh runs as {SPIFFE_DEFAULT}nobody"),
        );
    }
    let logs = cp.logs();
    assert!(
        logs.contains("refused a certificate request") && logs.contains("node2"),
        "{logs}"
    );
    assert!(
        !logs.contains(TOKEN) && !logs.contains(TOKEN_NODE2),
        "token logged"
    );
}

/// The mesh file is the scheduler here: rewriting it moves `a` from node1 to node2, and the
/// next request is judged by where `a` runs now.
#[tokio::test]
async fn a_workload_moving_to_another_node_moves_its_certificates() {
    let cp = Control::start(&mesh_yaml(&[w("a", "10.0.0.1")], false));
    assert_eq!(
        cp.sign(TOKEN, "a").await.unwrap(),
        format!("{SPIFFE_DEFAULT}a")
    );
    assert_denied(
        cp.sign(TOKEN_NODE2, "a").await,
        &other_node_refusal("tunnel-2", "node2", "a", "node1"),
    );

    write_mesh(
        &cp.mesh_path(),
        &mesh_yaml(&[w_on("a", "10.0.0.1", "node2")], false),
    );
    cp.wait_mesh("generation 2", |m| m["generation"] == 2).await;
    assert_denied(
        cp.sign(TOKEN, "a").await,
        &other_node_refusal("node-tunnels", "node1", "a", "node2"),
    );
    assert_eq!(
        cp.sign(TOKEN_NODE2, "a").await.unwrap(),
        format!("{SPIFFE_DEFAULT}a")
    );
}

/// The token file is re-read on change: rebinding a token to another node changes what it may
/// obtain on the next request; a rewrite that does not load refuses tokens until it is fixed.
#[tokio::test]
async fn a_token_file_rewrite_rebinds_tokens_without_restart() {
    let cp = Control::start(&mesh_yaml(
        &[w("a", "10.0.0.1"), w_on("b", "10.0.0.2", "node2")],
        false,
    ));
    assert!(cp.sign(TOKEN, "a").await.is_ok());
    assert!(cp.sign(TOKEN, "b").await.is_err());

    cp.write_tokens(&format!("{TOKEN} node=node2 moved\n"));
    assert_eq!(
        cp.sign(TOKEN, "b").await.unwrap(),
        format!("{SPIFFE_DEFAULT}b")
    );
    assert_denied(
        cp.sign(TOKEN, "a").await,
        &other_node_refusal("moved", "node2", "a", "node1"),
    );
    // Dropped from the file: no longer a token at all.
    let status = cp.sign(TOKEN_NODE2, "b").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A line in the old format: the file does not load, every token is refused, the log names
    // the line, and fixing the file restores the tokens.
    cp.write_tokens(&format!(
        "{TOKEN} node=node2 moved\n{TOKEN_NODE2} tunnel-2\n"
    ));
    let status = cp.sign(TOKEN, "b").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let logs = cp.logs();
    let tokens_path = cp.dir.path().join("tokens");
    assert!(
        logs.contains(&format!(
            "{}:2: the token names no node",
            tokens_path.display()
        )),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN_NODE2), "token logged: {logs}");
    cp.write_tokens(&format!("{TOKEN_NODE2} node=node2 tunnel-2\n"));
    assert!(cp.sign(TOKEN_NODE2, "b").await.is_ok());
}

/// A token file that does not load stops the control plane at start-up, naming each bad line
/// and never a token.
#[test]
fn a_malformed_token_file_at_start_exits_with_each_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, mesh_yaml(&[w("a", "10.0.0.1")], false)).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# header\nold-style-secret node-1\ngood-secret node=node1\nnode=node2 label\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodetunnel-control"))
        .arg("--mesh")
        .arg(&mesh)
        .arg("--token-file")
        .arg(&tokens)
        .args(["--listen", "127.0.0.1:0", "--status-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A control plane that accepted the file would serve forever: fail, don't hang.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("started with a malformed token file instead of exiting");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    let shown = tokens.display();
    assert!(
        err.contains(&format!("--token-file: {shown}:2: the token names no node")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{shown}:4: the line starts with `node=`")),
        "{err}"
    );
    assert!(!err.contains(":3:"), "the good line is not an error: {err}");
    assert!(!err.contains("secret"), "token echoed: {err}");
}

/// xDS serves the whole mesh to every node's tunnel (istiod does the same for ztunnel), so the
/// token's node does not filter it; but a tunnel whose `NODE_NAME` differs from its token's node
/// is told about in the log where it connects, and `/debug/connections` shows the binding.
#[tokio::test]
async fn xds_shows_the_tokens_node_and_warns_when_the_tunnel_claims_another() {
    let cp = Control::start(&mesh_yaml(
        &[w("a", "10.0.0.1"), w_on("b", "10.0.0.2", "node2")],
        false,
    ));
    let mut xds = cp.stream(Some(TOKEN_NODE2)).await.unwrap();
    let node_name = |name: &str| prost_types::Struct {
        fields: [(
            "NODE_NAME".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(name.into())),
            },
        )]
        .into(),
    };
    xds.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: NODE_ID.into(),
            metadata: Some(node_name("node1")),
            ..Default::default()
        }),
        type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
        ..Default::default()
    })
    .await;
    // Both workloads, whatever node the token names.
    assert_eq!(names(&xds.recv().await), vec![uid("a"), uid("b")]);
    let conns = cp.get_json("/debug/connections");
    assert_eq!(conns["connections"][0]["bound_node"], "node2", "{conns:#}");
    let start = Instant::now();
    while !cp
        .logs()
        .contains("the tunnel says it runs on another node than its token is bound to")
    {
        assert!(start.elapsed() < DEADLINE, "no warning:\n{}", cp.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = cp.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("another node than its token"))
        .unwrap();
    assert!(
        line.contains("node_name=node1") && line.contains("token_node=node2"),
        "{line}"
    );

    // A tunnel whose NODE_NAME matches its token draws no warning.
    let matching = cp.stream(Some(TOKEN)).await.unwrap();
    matching
        .send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.8~ztunnel-n1.istio-system~istio-system.svc.cluster.local"
                    .into(),
                metadata: Some(node_name("node1")),
                ..Default::default()
            }),
            type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
            ..Default::default()
        })
        .await;
    let mut matching = matching;
    matching.recv().await;
    // Closing it logs a line after any warning its first request drew; once that line is in,
    // so is the warning, if there was one.
    drop(matching);
    let start = Instant::now();
    while !cp
        .logs()
        .lines()
        .any(|l| l.contains("xDS stream closed by the client") && l.contains("ztunnel-n1"))
    {
        assert!(
            start.elapsed() < DEADLINE,
            "stream never closed:\n{}",
            cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        cp.logs()
            .matches("another node than its token is bound to")
            .count(),
        1,
        "{}",
        cp.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds on the gRPC and status ports

/// Whether the peer closed `conn`: reads (skipping what the server sends first, such as its
/// HTTP/2 SETTINGS) end in EOF or a reset instead of timing out.
fn closed_by_peer(conn: &mut impl Read) -> bool {
    loop {
        match conn.read(&mut [0u8; 1024]) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// A TCP connection from `source` to `to`, sending nothing.
async fn silent_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(to).await.unwrap().into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp
}

/// Completes a TLS handshake (offering h2) on `tcp` trusting the control plane's root, then
/// returns the session without sending HTTP/2's preface.
fn tls_only(
    cp: &Control,
    tcp: TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    try_tls(cp, tcp).expect("the TLS handshake")
}

/// [`tls_only`], or how the handshake failed.
fn try_tls(
    cp: &Control,
    tcp: TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cp.root()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Clients that connect and say nothing, or finish TLS and never send HTTP/2's preface, are
/// closed at the handshake deadline; a tunnel's xDS stream older than the deadline keeps
/// receiving pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_grpc_clients_are_closed_at_the_handshake_deadline() {
    let workloads = three_workloads();
    let cp = Control::start_with(
        &mesh_yaml(&workloads, true),
        &[("CONTROL_HANDSHAKE_TIMEOUT", "1s")],
    );
    let mut xds = cp.xds().await;
    xds.sync(&HashMap::new()).await;

    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(silent_from("127.0.0.1", cp.grpc).await);
    }
    let stalled = tls_only(&cp, silent_from("127.0.0.1", cp.grpc).await);

    let (silent_closed, stalled_closed) = tokio::task::spawn_blocking(move || {
        // `all` stops at the first left open: one read timeout, not one per client.
        let silent_closed = silent.iter_mut().all(closed_by_peer);
        let mut stalled = stalled;
        let stalled_closed = closed_by_peer(&mut stalled);
        (silent_closed, stalled_closed)
    })
    .await
    .unwrap();
    assert!(
        silent_closed,
        "a silent TCP client was left open\n{}",
        cp.logs()
    );
    assert!(
        stalled_closed,
        "a client that finished TLS but sent no HTTP/2 preface was left open\n{}",
        cp.logs()
    );
    assert!(
        cp.logs().contains("TLS handshake not finished within 1s"),
        "{}",
        cp.logs()
    );

    // The tunnel's connection outlived the deadline and still gets the next change.
    let mut edited = workloads.clone();
    edited[1].ip = "10.0.1.2".into();
    write_mesh(&cp.mesh_path(), &mesh_yaml(&edited, true));
    let push = xds.recv().await;
    assert_eq!(names(&push), vec![uid("b")]);
}

/// Over the per-address cap a connection is closed at accept and the refusal is logged with
/// the setting to raise; other addresses are unaffected, and a freed place is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_over_the_per_ip_cap_are_closed_and_logged() {
    let cp = Control::start_with(
        &mesh_yaml(&three_workloads(), true),
        &[
            ("CONTROL_MAX_CONNECTIONS_PER_IP", "2"),
            // Long enough that the held connections are not reaped during the test.
            ("CONTROL_HANDSHAKE_TIMEOUT", "600s"),
        ],
    );
    let held = [
        silent_from("127.0.0.2", cp.grpc).await,
        silent_from("127.0.0.2", cp.grpc).await,
    ];
    // Accept order is connect order: the first two hold the address's places.
    let mut over = silent_from("127.0.0.2", cp.grpc).await;
    let over_closed = tokio::task::spawn_blocking(move || closed_by_peer(&mut over))
        .await
        .unwrap();
    assert!(
        over_closed,
        "the third connection from 127.0.0.2 was held\n{}",
        cp.logs()
    );
    let start = Instant::now();
    while !cp.logs().contains("CONTROL_MAX_CONNECTIONS_PER_IP") {
        assert!(
            start.elapsed() < DEADLINE,
            "no refusal logged:\n{}",
            cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = cp.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("CONTROL_MAX_CONNECTIONS_PER_IP"))
        .unwrap();
    assert!(
        line.contains("at the connection cap") && line.contains("127.0.0.2"),
        "{line}"
    );

    // Another address still gets a full xDS sync.
    let mut xds = cp.xds().await;
    xds.sync(&HashMap::new()).await;

    // Closing one held connection frees its place for the next client from that address.
    drop(held);
    let start = Instant::now();
    loop {
        let tcp = silent_from("127.0.0.2", cp.grpc).await;
        if try_tls(&cp, tcp).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the freed places were never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A certificate request larger than the CA's limit is refused by the decoder with
/// OUT_OF_RANGE, naming the limit (tonic's default limit would let it through to the CSR parser).
#[tokio::test]
async fn an_oversized_certificate_request_is_refused_naming_the_limit() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: "A".repeat(1024 * 1024),
        validity_duration: 600,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let refused = IstioCertificateServiceClient::new(cp.channel().await)
        .create_certificate(request)
        .await
        .expect_err("a 1 MiB request was accepted");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("too large") && refused.message().contains("262144"),
        "{refused:?}"
    );
    // The connection and the service survive it.
    assert_eq!(
        cp.sign(TOKEN, "a").await.unwrap(),
        "spiffe://cluster.local/ns/default/sa/a"
    );
}

/// The status port holds at most its cap of connections (one more is closed unanswered) and
/// closes clients that never finish their request headers, after which it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_caps_connections_and_closes_unfinished_headers() {
    let cp = Control::start(&mesh_yaml(&three_workloads(), true));
    let mut unfinished = Vec::new();
    for _ in 0..64 {
        let mut tcp = silent_from("127.0.0.1", cp.status).await;
        tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: status\r\n")
            .unwrap();
        unfinished.push(tcp);
    }
    let status = cp.status;
    let (over, unfinished_closed) = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(status).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: status\r\nconnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let read = tcp.read_to_end(&mut answer);
        let over = (
            read.map_err(|e| e.kind()),
            String::from_utf8_lossy(&answer).into_owned(),
        );
        let closed = unfinished.iter_mut().all(closed_by_peer);
        (over, closed)
    })
    .await
    .unwrap();
    assert!(
        !over.1.contains("HTTP/1.1"),
        "a 65th connection was served: {over:?}"
    );
    assert!(
        !matches!(
            over.0,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the 65th connection was held, not closed: {over:?}"
    );
    assert!(
        unfinished_closed,
        "a client with unfinished headers was left open"
    );
    let (code, body) = http_get(cp.status, "/ready");
    assert_eq!(code, 200, "{body}");
}
