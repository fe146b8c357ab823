//! The delta xDS client against a real tonic ADS server on loopback TCP with real TLS. Each
//! test scripts the server: it receives the client's requests one by one and pushes responses,
//! so every ACK, NACK and resubscription is observed on the wire.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nodetunnel::grpc::GrpcTarget;
use nodetunnel::state::{Defaults, NamespacedHostname, StateHandle};
use nodetunnel::xds::{NodeInfo, XdsClient, XdsConfig, XdsHandle};
use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use nodetunnel_proto::istio::security::{Action, Authorization, Scope};
use nodetunnel_proto::istio::workload::{
    address, Address, NetworkAddress, Port, Service, TunnelProtocol, Workload,
};
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;
use prost_types::value::Kind as ValueKind;
use prost_types::Any;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Test PKI: a root the client trusts (written to a file, as XDS_ROOT_CA would be) and a
// serving certificate for 127.0.0.1 signed by it.

struct Pki {
    _dir: tempfile::TempDir,
    root_file: PathBuf,
    token_file: PathBuf,
    identity: Identity,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = params.signed_by(&key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("root-cert.pem");
    std::fs::write(&root_file, ca_cert.pem()).unwrap();
    let token_file = dir.path().join("istio-token");
    std::fs::write(&token_file, "secret-token\n").unwrap();
    Pki {
        _dir: dir,
        root_file,
        token_file,
        identity: Identity::from_pem(cert.pem(), key.serialize_pem()),
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted ADS server.

/// One accepted `DeltaAggregatedResources` call, driven by the test.
struct Session {
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    metadata: MetadataMap,
    nonce: u64,
}

impl Session {
    async fn recv(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("no request from the client in time")
            .expect("request stream failed")
            .expect("request stream ended")
    }

    /// The two initial requests, keyed by type URL.
    async fn initial(&mut self) -> HashMap<String, DeltaDiscoveryRequest> {
        let mut by_type = HashMap::new();
        for _ in 0..2 {
            let r = self.recv().await;
            assert!(
                r.response_nonce.is_empty(),
                "initial request carries a nonce: {r:?}"
            );
            by_type.insert(r.type_url.clone(), r);
        }
        assert!(by_type.contains_key(WORKLOAD_ADDRESS_TYPE_URL));
        assert!(by_type.contains_key(AUTHORIZATION_TYPE_URL));
        by_type
    }

    /// Sends a response and returns the client's answer to it.
    async fn push(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryRequest {
        self.nonce += 1;
        let nonce = format!("nonce-{}", self.nonce);
        let response = DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.clone(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            system_version_info: "test".into(),
            ..Default::default()
        };
        self.responses.send(Ok(response)).await.unwrap();
        let reply = self.recv().await;
        assert_eq!(reply.type_url, type_url);
        assert_eq!(reply.response_nonce, nonce, "answer to the wrong response");
        reply
    }

    async fn push_acked(&mut self, type_url: &str, resources: Vec<Resource>, removed: &[&str]) {
        let reply = self.push(type_url, resources, removed).await;
        assert!(
            reply.error_detail.is_none(),
            "expected an ACK, got a NACK: {:?}",
            reply.error_detail
        );
    }

    /// Pushes the standard mesh (two workloads, a service, a policy) and expects two ACKs.
    async fn sync_standard(&mut self) {
        self.initial().await;
        self.push_acked(
            WORKLOAD_ADDRESS_TYPE_URL,
            vec![
                address("uid-a", "v1", workload("uid-a", [10, 0, 0, 1])),
                address("uid-b", "v1", workload("uid-b", [10, 0, 0, 2])),
                address(ECHO, "v1", service("echo", [10, 96, 0, 10])),
            ],
            &[],
        )
        .await;
        self.push_acked(
            AUTHORIZATION_TYPE_URL,
            vec![policy_resource("deny-80", "v1")],
            &[],
        )
        .await;
    }
}

struct Ads {
    sessions: mpsc::UnboundedSender<Session>,
    calls: Arc<AtomicUsize>,
    /// When set, every call is refused with this status.
    reject: Option<Status>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world ADS is not served",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = &self.reject {
            return Err(status.clone());
        }
        let (tx, rx) = mpsc::channel(16);
        let metadata = request.metadata().clone();
        let _ = self.sessions.send(Session {
            requests: request.into_inner(),
            responses: tx,
            metadata,
            nonce: 0,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct AdsServer {
    addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl AdsServer {
    async fn start(pki: &Pki, reject: Option<Status>) -> AdsServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::unbounded_channel();
        let calls = Arc::new(AtomicUsize::new(0));
        let ads = Ads {
            sessions: tx,
            calls: calls.clone(),
            reject,
        };
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(pki.identity.clone()))
            .unwrap()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        AdsServer {
            addr,
            sessions,
            calls,
            task,
        }
    }

    fn address(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("the client did not open a stream in time")
            .unwrap()
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The client under test.

struct Tunnel {
    state: StateHandle,
    handle: XdsHandle,
    task: JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn node_info() -> NodeInfo {
    NodeInfo {
        pod_name: "ztunnel-x1".into(),
        pod_namespace: "istio-system".into(),
        instance_ip: "10.0.0.100".into(),
        node_name: "worker-1".into(),
        cluster_id: "Kubernetes".into(),
        cluster_domain: "cluster.local".into(),
        extra_metadata: Default::default(),
    }
}

fn config(address: String, pki: &Pki) -> XdsConfig {
    XdsConfig {
        target: GrpcTarget {
            address,
            root_cert: Some(pki.root_file.clone()),
            token: Some(pki.token_file.clone()),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        },
        node: node_info(),
    }
}

fn start_client(address: String, pki: &Pki) -> Tunnel {
    init_logs();
    let state = StateHandle::default();
    let (client, handle) =
        XdsClient::new(config(address, pki), state.clone(), Defaults::default()).unwrap();
    let task = tokio::spawn(client.run());
    Tunnel {
        state,
        handle,
        task,
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nodetunnel=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` until it holds or [`WAIT`] passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Resources.

const ECHO: &str = "default/echo.default.svc.cluster.local";

fn workload(uid: &str, ip: [u8; 4]) -> Address {
    workload_raw(uid, ip.to_vec())
}

fn workload_raw(uid: &str, ip: Vec<u8>) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "echo".into(),
            trust_domain: "cluster.local".into(),
            addresses: vec![ip],
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            node: "worker-1".into(),
            cluster_id: "Kubernetes".into(),
            services: HashMap::from([(
                ECHO.to_string(),
                nodetunnel_proto::istio::workload::PortList {
                    ports: vec![Port {
                        service_port: 80,
                        target_port: 8080,
                    }],
                },
            )]),
            ..Default::default()
        })),
    }
}

fn service(name: &str, vip: [u8; 4]) -> Address {
    Address {
        r#type: Some(address::Type::Service(Service {
            name: name.into(),
            namespace: "default".into(),
            hostname: format!("{name}.default.svc.cluster.local"),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                length: None,
            }],
            ports: vec![Port {
                service_port: 80,
                target_port: 8080,
            }],
            ..Default::default()
        })),
    }
}

fn address(name: &str, version: &str, msg: Address) -> Resource {
    resource(name, version, WORKLOAD_ADDRESS_TYPE_URL, &msg)
}

fn policy_resource(name: &str, version: &str) -> Resource {
    let policy = Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        action: Action::Deny as i32,
        rules: vec![],
        ..Default::default()
    };
    resource(
        &format!("default/{name}"),
        version,
        AUTHORIZATION_TYPE_URL,
        &policy,
    )
}

fn resource<M: Message>(name: &str, version: &str, type_url: &str, msg: &M) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value: msg.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn versions(handle: &XdsHandle, type_url: &str) -> HashMap<String, String> {
    let snapshot = handle.snapshot();
    serde_json::from_value(snapshot["types"][type_url]["versions"].clone()).unwrap()
}

fn metadata_string(r: &DeltaDiscoveryRequest, key: &str) -> String {
    let node = r.node.as_ref().expect("initial request without a node");
    match node.metadata.as_ref().unwrap().fields[key].kind.as_ref() {
        Some(ValueKind::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn initial_sync_applies_both_types_and_flips_synced() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;

    // Credentials ride on the stream's headers.
    assert_eq!(
        s.metadata.get("authorization").unwrap(),
        "Bearer secret-token"
    );
    assert_eq!(s.metadata.get("clusterid").unwrap(), "Kubernetes");

    let initial = s.initial().await;
    for (type_url, r) in &initial {
        let node = r.node.as_ref().expect("node on the first request");
        assert_eq!(
            node.id, "ztunnel~10.0.0.100~ztunnel-x1.istio-system~istio-system.svc.cluster.local",
            "{type_url}"
        );
        assert_eq!(metadata_string(r, "NAME"), "ztunnel-x1");
        assert_eq!(metadata_string(r, "NAMESPACE"), "istio-system");
        assert_eq!(metadata_string(r, "INSTANCE_IPS"), "10.0.0.100");
        assert_eq!(metadata_string(r, "NODE_NAME"), "worker-1");
        assert_eq!(metadata_string(r, "CLUSTER_ID"), "Kubernetes");
        assert_eq!(r.resource_names_subscribe, vec!["*".to_string()]);
        assert!(r.initial_resource_versions.is_empty());
    }

    let synced = tunnel.handle.synced();
    let reply = s
        .push(
            WORKLOAD_ADDRESS_TYPE_URL,
            vec![
                address("uid-a", "v1", workload("uid-a", [10, 0, 0, 1])),
                address("uid-b", "v1", workload("uid-b", [10, 0, 0, 2])),
                address(ECHO, "v1", service("echo", [10, 96, 0, 10])),
            ],
            &[],
        )
        .await;
    assert!(reply.error_detail.is_none(), "{:?}", reply.error_detail);
    assert!(reply.node.is_none(), "ACKs do not repeat the node");
    assert!(
        !*synced.borrow(),
        "synced before the authorization type arrived"
    );

    s.push_acked(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource("deny-80", "v1")],
        &[],
    )
    .await;
    assert!(*synced.borrow(), "not synced after both types were applied");

    {
        let store = tunnel.state.read();
        assert_eq!(
            store.workload_by_uid("uid-a").unwrap().workload_ips,
            vec![ip("10.0.0.1")]
        );
        assert!(store.workload_by_ip("", ip("10.0.0.2")).is_some());
        let echo: NamespacedHostname = ECHO.parse().unwrap();
        assert!(store.service(&echo).is_some());
        assert_eq!(store.endpoints(&echo).len(), 2);
        assert_eq!(store.policies().count(), 1);
    }

    let stats = tunnel.handle.stats();
    assert!(stats.connected);
    assert_eq!(stats.connects, 1);
    assert_eq!(stats.addresses.resources, 3);
    assert_eq!(stats.addresses.acks, 1);
    assert_eq!(stats.authorizations.resources, 1);
    assert!(stats.last_apply_duration.is_some());

    let snap = tunnel.handle.snapshot();
    assert_eq!(snap["address"], server.address());
    assert_eq!(snap["connected"], true);
    assert_eq!(snap["synced"], true);
    assert_eq!(
        snap["node_id"],
        "ztunnel~10.0.0.100~ztunnel-x1.istio-system~istio-system.svc.cluster.local"
    );
    let a = &snap["types"][WORKLOAD_ADDRESS_TYPE_URL];
    assert_eq!(a["versions"]["uid-a"], "v1");
    assert_eq!(a["versions"][ECHO], "v1");
    assert_eq!(a["last_nonce"], "nonce-1");
    assert_eq!(
        snap["types"][AUTHORIZATION_TYPE_URL]["last_nonce"],
        "nonce-2"
    );
    assert!(tunnel.handle.last_error().is_none());
}

#[tokio::test]
async fn updates_replace_and_removals_delete() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;

    // uid-a moves to a new address.
    s.push_acked(
        WORKLOAD_ADDRESS_TYPE_URL,
        vec![address("uid-a", "v2", workload("uid-a", [10, 0, 0, 9]))],
        &[],
    )
    .await;
    {
        let store = tunnel.state.read();
        assert_eq!(
            store.workload_by_uid("uid-a").unwrap().workload_ips,
            vec![ip("10.0.0.9")]
        );
        assert!(store.workload_by_ip("", ip("10.0.0.1")).is_none());
        assert!(store.workload_by_uid("uid-b").is_some(), "untouched");
    }

    // uid-b and the policy are deleted.
    s.push_acked(WORKLOAD_ADDRESS_TYPE_URL, vec![], &["uid-b"])
        .await;
    s.push_acked(AUTHORIZATION_TYPE_URL, vec![], &["default/deny-80"])
        .await;
    {
        let store = tunnel.state.read();
        assert!(store.workload_by_uid("uid-b").is_none());
        assert!(store.workload_by_ip("", ip("10.0.0.2")).is_none());
        assert_eq!(store.policies().count(), 0);
    }
    let v = versions(&tunnel.handle, WORKLOAD_ADDRESS_TYPE_URL);
    assert_eq!(
        v,
        HashMap::from([
            ("uid-a".to_string(), "v2".to_string()),
            (ECHO.to_string(), "v1".to_string()),
        ])
    );
    assert!(versions(&tunnel.handle, AUTHORIZATION_TYPE_URL).is_empty());
    assert_eq!(tunnel.handle.stats().addresses.acks, 3);
}

#[tokio::test]
async fn pushes_beyond_grpc_default_message_limit_are_accepted() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;

    // An initial push for a large mesh is tens of MiB; gRPC's default limit is 4 MiB. Pad
    // one resource past it (aliases are ignored by the client).
    let mut big = address("uid-big", "v1", workload("uid-big", [10, 0, 1, 1]));
    big.aliases = (0..6 * 1024).map(|i| format!("{i:01024}")).collect();
    s.push_acked(WORKLOAD_ADDRESS_TYPE_URL, vec![big], &[])
        .await;
    assert!(tunnel.state.read().workload_by_uid("uid-big").is_some());
}

#[tokio::test]
async fn a_bad_resource_is_nacked_alone_and_the_rest_applied() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;

    // A valid update together with a 5-byte address: the valid one is applied, the bad one
    // NACKed by name (ztunnel's rule).
    let reply = s
        .push(
            WORKLOAD_ADDRESS_TYPE_URL,
            vec![
                address("uid-a", "v2", workload("uid-a", [10, 0, 0, 9])),
                address(
                    "uid-bad",
                    "v1",
                    workload_raw("uid-bad", vec![10, 0, 0, 7, 1]),
                ),
            ],
            &[],
        )
        .await;
    let error = reply.error_detail.expect("a NACK");
    assert_eq!(error.code, 3, "INVALID_ARGUMENT");
    assert!(error.message.contains("uid-bad"), "{}", error.message);
    assert!(
        !error.message.contains("\"uid-a\""),
        "only the bad resource is named: {}",
        error.message
    );
    {
        let store = tunnel.state.read();
        assert_eq!(
            store.workload_by_uid("uid-a").unwrap().workload_ips,
            vec![ip("10.0.0.9")],
            "the valid half of a NACKed response is applied"
        );
        assert!(store.workload_by_uid("uid-bad").is_none());
    }
    let accepted = versions(&tunnel.handle, WORKLOAD_ADDRESS_TYPE_URL);
    assert_eq!(accepted["uid-a"], "v2");
    assert!(!accepted.contains_key("uid-bad"), "{accepted:?}");
    let snap = tunnel.handle.snapshot();
    let last_nack = snap["types"][WORKLOAD_ADDRESS_TYPE_URL]["last_nack"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last_nack.contains("uid-bad"), "{last_nack}");

    // Two workloads claiming one address is what istiod sends for host-network pods (and for a
    // pod IP reused before the old pod's removal arrives): ACKed, both kept.
    s.push_acked(
        WORKLOAD_ADDRESS_TYPE_URL,
        vec![address("uid-c", "v1", workload("uid-c", [10, 0, 0, 2]))],
        &[],
    )
    .await;
    assert_eq!(
        tunnel.state.read().workloads_at("", ip("10.0.0.2")).len(),
        2,
        "both claimants of 10.0.0.2 are kept"
    );

    // A type we never asked for.
    let reply = s
        .push(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            vec![],
            &[],
        )
        .await;
    let error = reply.error_detail.expect("a NACK for an unknown type");
    assert!(
        error.message.contains("envoy.config.cluster.v3.Cluster"),
        "{}",
        error.message
    );

    // The stream is still good: the next valid push is ACKed and applied.
    s.push_acked(
        WORKLOAD_ADDRESS_TYPE_URL,
        vec![address("uid-a", "v3", workload("uid-a", [10, 0, 0, 9]))],
        &[],
    )
    .await;
    assert_eq!(
        tunnel
            .state
            .read()
            .workload_by_uid("uid-a")
            .unwrap()
            .workload_ips,
        vec![ip("10.0.0.9")]
    );
    let stats = tunnel.handle.stats();
    assert_eq!(stats.addresses.nacks, 1);
    assert_eq!(stats.addresses.acks, 3);
    assert_eq!(stats.unknown_type_nacks, 1);
    assert_eq!(stats.connects, 1, "a NACK must not cost the stream");
}

/// A workload whose addresses include a loopback or unspecified address is NACKed; the NACK
/// names the workload, the field and the address, and the rest of the push is applied.
#[tokio::test]
async fn a_workload_on_a_loopback_or_unspecified_address_is_nacked_by_name() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;

    let v6 = |ip: &str| ip.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    let cases = [
        (vec![127, 0, 0, 1], "127.0.0.1"),
        (vec![0, 0, 0, 0], "0.0.0.0"),
        (v6("::1"), "::1"),
        (v6("::"), "::"),
    ];
    for (i, (bytes, shown)) in cases.into_iter().enumerate() {
        let uid = format!("uid-local-{i}");
        let mut evil = workload_raw(&uid, vec![10, 0, 0, 50 + i as u8]);
        if let Some(address::Type::Workload(w)) = &mut evil.r#type {
            w.addresses.push(bytes);
        }
        let reply = s
            .push(
                WORKLOAD_ADDRESS_TYPE_URL,
                vec![
                    address("uid-a", "v9", workload("uid-a", [10, 0, 0, 9])),
                    address(&uid, "v1", evil),
                ],
                &[],
            )
            .await;
        let error = reply
            .error_detail
            .unwrap_or_else(|| panic!("{shown}: ACKed a workload on a host address"));
        assert_eq!(error.code, 3, "INVALID_ARGUMENT");
        let expected = format!("\"{uid}\": workload.addresses[1]: {shown}: ");
        assert!(
            error.message.contains(&expected),
            "{shown}: the NACK does not name the workload and field: {}",
            error.message
        );
        let store = tunnel.state.read();
        assert!(store.workload_by_uid(&uid).is_none(), "{shown}: stored");
        assert_eq!(
            store.workload_by_uid("uid-a").unwrap().workload_ips,
            vec![ip("10.0.0.9")],
            "{shown}: the rest of the NACKed push was applied"
        );
    }
    assert_eq!(tunnel.handle.stats().addresses.nacks, 4);
}

/// The first response of a type is the whole state. When one of its resources is bad, the
/// rest is the state to serve: the tunnel becomes ready on it (one bad resource from istiod
/// must not keep a node's tunnel unready forever) and the bad one stays out.
#[tokio::test]
async fn a_partly_nacked_first_response_still_syncs_with_its_good_part() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.initial().await;
    let reply = s
        .push(
            WORKLOAD_ADDRESS_TYPE_URL,
            vec![
                address("uid-a", "v1", workload("uid-a", [10, 0, 0, 1])),
                address("uid-bad", "v1", workload_raw("uid-bad", vec![10, 0, 0])),
            ],
            &[],
        )
        .await;
    let error = reply.error_detail.expect("the bad resource is NACKed");
    assert!(error.message.contains("uid-bad"), "{}", error.message);
    assert!(
        !*tunnel.handle.synced().borrow(),
        "authorizations still pending"
    );
    s.push_acked(
        AUTHORIZATION_TYPE_URL,
        vec![policy_resource("deny-80", "v1")],
        &[],
    )
    .await;
    assert!(tunnel.state.read().workload_by_uid("uid-a").is_some());
    assert!(tunnel.state.read().workload_by_uid("uid-bad").is_none());
    assert!(
        *tunnel.handle.synced().borrow(),
        "the good part of the first address push was applied and counts as the state"
    );
}

#[tokio::test]
async fn reconnects_resume_from_the_accepted_versions() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;
    s.push_acked(
        WORKLOAD_ADDRESS_TYPE_URL,
        vec![address("uid-a", "v2", workload("uid-a", [10, 0, 0, 9]))],
        &[],
    )
    .await;

    // The server ends the stream cleanly (as istiod does at its max connection age).
    drop(s);
    let mut s = server.session().await;
    let initial = s.initial().await;
    assert_eq!(
        initial[WORKLOAD_ADDRESS_TYPE_URL].initial_resource_versions,
        HashMap::from([
            ("uid-a".to_string(), "v2".to_string()),
            ("uid-b".to_string(), "v1".to_string()),
            (ECHO.to_string(), "v1".to_string()),
        ])
    );
    assert_eq!(
        initial[AUTHORIZATION_TYPE_URL].initial_resource_versions,
        HashMap::from([("default/deny-80".to_string(), "v1".to_string())])
    );
    assert!(initial[WORKLOAD_ADDRESS_TYPE_URL].node.is_some());
    // The state kept serving across the gap, and readiness did not flap.
    assert!(tunnel.state.read().workload_by_uid("uid-b").is_some());
    assert!(*tunnel.handle.synced().borrow());

    // uid-b was deleted while we were away: the server says so in its first response.
    s.push_acked(WORKLOAD_ADDRESS_TYPE_URL, vec![], &["uid-b"])
        .await;
    s.push_acked(AUTHORIZATION_TYPE_URL, vec![], &[]).await;
    assert!(tunnel.state.read().workload_by_uid("uid-b").is_none());
    assert!(
        tunnel.handle.last_error().is_none(),
        "a clean close is no error"
    );

    // Now the stream fails with an error: it is recorded, and the client comes back again.
    s.responses
        .send(Err(Status::internal("xds generator crashed")))
        .await
        .unwrap();
    let mut s = server.session().await;
    let initial = s.initial().await;
    assert_eq!(
        initial[WORKLOAD_ADDRESS_TYPE_URL].initial_resource_versions,
        HashMap::from([
            ("uid-a".to_string(), "v2".to_string()),
            (ECHO.to_string(), "v1".to_string()),
        ])
    );
    let error = tunnel.handle.last_error().expect("the failure is recorded");
    assert!(error.contains("xds generator crashed"), "{error}");
    assert!(error.contains(&server.address()), "{error}");
    eventually("three streams established", || {
        tunnel.handle.stats().connects == 3
    })
    .await;
}

#[tokio::test]
async fn rejected_credentials_are_reported_and_retried_with_backoff() {
    let pki = pki();
    let server = AdsServer::start(
        &pki,
        Some(Status::unauthenticated("bearer token not accepted")),
    )
    .await;
    let tunnel = start_client(server.address(), &pki);

    eventually("the client records the refusal", || {
        tunnel.handle.last_error().is_some()
    })
    .await;
    let error = tunnel.handle.last_error().unwrap();
    assert!(error.contains("rejected our credentials"), "{error}");
    assert!(error.contains("bearer token not accepted"), "{error}");
    assert!(error.contains(&server.address()), "{error}");
    assert!(!*tunnel.handle.synced().borrow());
    assert_eq!(tunnel.handle.stats().connects, 0);

    // Backoff, not a hot loop: 100 ms doubling (±50%) allows at most a handful of attempts
    // in 1.5 s; a loop without backoff would make hundreds.
    let before = server.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let made = server.calls.load(Ordering::SeqCst) - before;
    assert!(made <= 8, "{made} attempts in 1.5 s");
    assert!(made >= 1, "the client stopped retrying");
}

#[tokio::test]
async fn unreachable_control_plane_is_retried_with_backoff() {
    let pki = pki();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let address = format!("https://127.0.0.1:{port}");
    let tunnel = start_client(address.clone(), &pki);

    tokio::time::sleep(Duration::from_millis(2000)).await;
    let stats = tunnel.handle.stats();
    assert!(
        (2..=10).contains(&stats.attempts),
        "{} attempts in 2 s",
        stats.attempts
    );
    assert_eq!(stats.connects, 0);
    assert!(!stats.connected);
    let error = tunnel.handle.last_error().expect("an error is recorded");
    assert!(error.contains("cannot reach"), "{error}");
    assert!(error.contains(&address), "{error}");
}

#[tokio::test]
async fn unusable_address_or_root_fails_at_start() {
    let pki = pki();
    let err = XdsClient::new(
        config("istiod.istio-system.svc:15012".into(), &pki),
        StateHandle::default(),
        Defaults::default(),
    )
    .err()
    .expect("an address without a scheme is refused");
    assert!(
        err.to_string().contains("istiod.istio-system.svc:15012"),
        "{err}"
    );

    let mut cfg = config("https://127.0.0.1:15012".into(), &pki);
    cfg.target.root_cert = Some("/nonexistent/root-cert.pem".into());
    let err = XdsClient::new(cfg, StateHandle::default(), Defaults::default())
        .err()
        .expect("a missing root file is refused");
    assert!(
        err.to_string().contains("/nonexistent/root-cert.pem"),
        "{err}"
    );
}

/// A newer istiod may send enum values this version does not know: the resource is skipped
/// with a warning (as ztunnel drops it) and the push is ACKed, its other resources applied.
#[tokio::test]
async fn an_unknown_enum_value_is_skipped_and_the_push_acked() {
    let pki = pki();
    let mut server = AdsServer::start(&pki, None).await;
    let tunnel = start_client(server.address(), &pki);
    let mut s = server.session().await;
    s.sync_standard().await;

    let mut newer = workload("uid-newer", [10, 0, 0, 20]);
    if let Some(address::Type::Workload(w)) = &mut newer.r#type {
        w.tunnel_protocol = 42; // a tunnel protocol of some future istiod
    }
    s.push_acked(
        WORKLOAD_ADDRESS_TYPE_URL,
        vec![
            address("uid-a", "v2", workload("uid-a", [10, 0, 0, 21])),
            address("uid-newer", "v1", newer),
        ],
        &[],
    )
    .await;
    let store = tunnel.state.read();
    assert!(store.workload_by_uid("uid-newer").is_none());
    assert_eq!(
        store.workload_by_uid("uid-a").unwrap().workload_ips,
        vec![ip("10.0.0.21")]
    );
    drop(store);
    let snap = tunnel.handle.snapshot();
    assert_eq!(
        snap["types"][WORKLOAD_ADDRESS_TYPE_URL]["ignored"], 1,
        "{snap}"
    );
    assert_eq!(tunnel.handle.stats().addresses.nacks, 0);
}
