//! End-to-end: the real `nodetunnel` daemon fed, over delta xDS, pushes shaped byte for byte as
//! istiod sends them for a real cluster — including what our own control plane can never emit
//! (enum values of a newer istiod, fields this version does not know) — by a stand-in istiod in
//! the test (a tonic ADS server in n1 that records every ACK and NACK):
//! - host-network pods sharing each node's IP;
//! - a workload whose `tunnel_protocol` and a service whose load-balancing `mode` carry enum
//!   values this version does not know: skipped with a warning, the push ACKed;
//! - unknown fields on a workload: ignored, as protobuf wants;
//! - a pod IP reused by a new pod before the old pod's removal arrives, then the removal.
//!
//! Every push must be ACKed and the good resources serve traffic: client → server over HBONE,
//! directly and through the service VIP. n2's tunnel and both tunnels' certificates come from the
//! real `nodetunnel-control` (one CA, so the two sides trust each other).
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10), n2 10.77.2.1 (server
//! 10.77.2.10).
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use nodetunnel_proto::istio::workload::{
    address, Address, LoadBalancing, NetworkAddress, NetworkMode, Port, PortList, Service,
    TunnelProtocol, Workload,
};
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::ADDRESS_TYPE_URL;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, namespaces_available, set_env, tunnel_env, Ca,
    Capture, Mesh, MeshConfig, Netns, Server, ServerPki, Topology,
};
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server as GrpcServer, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const ECHO_PORT: u16 = 8080;
const SERVICE_HOST: &str = "server.default.svc.cluster.local";
/// The name in the stand-in istiod's certificate, as in a cluster.
const ISTIOD_NAME: &str = "istiod.istio-system.svc";
const WAIT: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn ip(a: Ipv4Addr) -> Vec<u8> {
    a.octets().to_vec()
}

fn pod(name: &str, ip_addr: Ipv4Addr, node: &str) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        trust_domain: "cluster.local".into(),
        addresses: vec![ip(ip_addr)],
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        node: node.into(),
        cluster_id: "Kubernetes".into(),
        canonical_name: name.into(),
        canonical_revision: "latest".into(),
        workload_name: name.into(),
        ..Default::default()
    }
}

fn host_network_pod(name: &str, node: &str, node_ip: Ipv4Addr) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/kube-system/{name}-{node}"),
        namespace: "kube-system".into(),
        tunnel_protocol: TunnelProtocol::None as i32,
        network_mode: NetworkMode::HostNetwork as i32,
        ..pod(&format!("{name}-{node}"), node_ip, node)
    }
}

fn server_pod(name: &str) -> Workload {
    Workload {
        service_account: "server".into(),
        services: HashMap::from([(
            format!("default/{SERVICE_HOST}"),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: ECHO_PORT as u32,
                }],
            },
        )]),
        ..pod(name, addr::SERVER, "n2")
    }
}

fn service() -> Service {
    Service {
        name: "server".into(),
        namespace: "default".into(),
        hostname: SERVICE_HOST.into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: ip(addr::SERVICE_VIP),
            length: None,
        }],
        ports: vec![Port {
            service_port: 80,
            target_port: ECHO_PORT as u32,
        }],
        ..Default::default()
    }
}

fn workload_resource(w: Workload) -> Resource {
    let name = w.uid.clone();
    let bytes = Address {
        r#type: Some(address::Type::Workload(w)),
    }
    .encode_to_vec();
    resource(&name, bytes)
}

fn service_resource(s: Service) -> Resource {
    let name = format!("{}/{}", s.namespace, s.hostname);
    let bytes = Address {
        r#type: Some(address::Type::Service(s)),
    }
    .encode_to_vec();
    resource(&name, bytes)
}

fn resource(name: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: format!("{:x}", value.len() * 31 + name.len()),
        resource: Some(Any {
            type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
            value,
        }),
        ..Default::default()
    }
}

/// Appends to an encoded `Address` a field no version of the proto defines: the nested
/// `Workload` (field 1, length-delimited) gains field 200 (varint 7). A decoder must skip it.
fn with_unknown_field(w: Workload) -> Resource {
    let name = w.uid.clone();
    let mut inner = w.encode_to_vec();
    inner.extend([0xC0, 0x0C, 0x07]); // tag (200 << 3 | 0) as varint, then 7
    let mut outer = vec![0x0A];
    prost::encoding::encode_varint(inner.len() as u64, &mut outer);
    outer.extend(inner);
    assert!(
        Address::decode(outer.as_slice()).is_ok(),
        "still a valid Address"
    );
    resource(&name, outer)
}

/// The first push: what istiod sends for this two-node cluster, with the newer-istiod oddities.
fn initial_push() -> Vec<Resource> {
    let mut resources = vec![
        workload_resource(pod("client", addr::CLIENT, "n1")),
        workload_resource(pod("client2", addr::CLIENT2, "n1")),
        with_unknown_field(server_pod("server")),
        service_resource(service()),
    ];
    for (node, node_ip) in [("n1", addr::NODE1), ("n2", addr::NODE2)] {
        for name in ["kube-proxy", "node-exporter", "csi-node"] {
            resources.push(workload_resource(host_network_pod(name, node, node_ip)));
        }
    }
    // A tunnel protocol of some future istiod.
    resources.push(workload_resource(Workload {
        tunnel_protocol: 42,
        ..pod("future", Ipv4Addr::new(10, 77, 2, 99), "n2")
    }));
    // A load-balancing mode of some future istiod.
    resources.push(service_resource(Service {
        name: "future".into(),
        hostname: "future.default.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 99],
            length: None,
        }],
        load_balancing: Some(LoadBalancing {
            mode: 99,
            ..Default::default()
        }),
        ..service()
    }));
    resources
}

/// Where a stream's responses are queued.
type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// What the stand-in istiod saw: per response nonce, the ACK (`None`) or NACK reason.
#[derive(Clone, Default)]
struct Istiod {
    replies: Arc<Mutex<HashMap<String, Option<String>>>>,
    /// The open stream's sender, for later pushes.
    stream: Arc<Mutex<Option<ResponseSender>>>,
    nonces: Arc<Mutex<u64>>,
}

impl Istiod {
    fn next_nonce(&self) -> String {
        let mut n = self.nonces.lock().unwrap();
        *n += 1;
        format!("n{n}")
    }

    fn response(
        &self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: self.next_nonce(),
            ..Default::default()
        }
    }

    /// Sends a push on the open stream; returns its nonce.
    fn push(&self, resources: Vec<Resource>, removed: &[&str]) -> String {
        let response = self.response(WORKLOAD_ADDRESS_TYPE_URL, resources, removed);
        let nonce = response.nonce.clone();
        let sender = self
            .stream
            .lock()
            .unwrap()
            .clone()
            .expect("an open xDS stream");
        sender.try_send(Ok(response)).expect("queueing the push");
        nonce
    }

    fn reply_to(&self, nonce: &str) -> Option<Option<String>> {
        self.replies.lock().unwrap().get(nonce).cloned()
    }

    fn nacks(&self) -> Vec<String> {
        self.replies
            .lock()
            .unwrap()
            .values()
            .filter_map(|r| r.clone())
            .collect()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Istiod {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("only delta xDS"))
    }

    /// Answers each type's subscription with the cluster's resources and records every ACK and
    /// NACK.
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        *self.stream.lock().unwrap() = Some(tx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                if !req.response_nonce.is_empty() {
                    let nack = req.error_detail.map(|s| s.message);
                    me.replies.lock().unwrap().insert(req.response_nonce, nack);
                    continue;
                }
                let response = match req.type_url.as_str() {
                    WORKLOAD_ADDRESS_TYPE_URL => {
                        me.response(WORKLOAD_ADDRESS_TYPE_URL, initial_push(), &[])
                    }
                    AUTHORIZATION_TYPE_URL => me.response(AUTHORIZATION_TYPE_URL, Vec::new(), &[]),
                    _ => continue,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The stand-in istiod on 127.0.0.1 of `ns`, its certificate naming [`ISTIOD_NAME`]; returns
/// the runtime serving it, its address and the root to trust.
fn start_istiod(
    ns: &Netns,
    dir: &Path,
    istiod: &Istiod,
) -> (tokio::runtime::Runtime, SocketAddr, PathBuf) {
    let pki =
        ServerPki::generate(ISTIOD_NAME, dir, "istiod-root.pem").expect("the servers' certificate");
    let listener = ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the stand-in istiod's port");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let service = istiod.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        GrpcServer::builder()
            .tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(pki.cert_pem, pki.key_pem)),
            )
            .unwrap()
            .add_service(AggregatedDiscoveryServiceServer::new(service))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (rt, addr, pki.root)
}

#[test]
fn every_istiod_shaped_push_is_acked_and_its_good_resources_serve_traffic() {
    if !namespaces_available("istiod_push") {
        return;
    }
    let topo = Topology::two_node("istiod_push", Capture::ALL).expect("building the topology");
    // The real control plane: n2's mesh and both tunnels' CA.
    let (cp, _mesh) = topo
        .start_mesh_control("n1", bin(), &MeshConfig::standard(ECHO_PORT))
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let istiod = Istiod::default();
    let (_rt, istiod_addr, istiod_root) = start_istiod(topo.ns("n1"), dir.path(), &istiod);

    let _t2 = topo
        .start_control_tunnel("n2", bin(), &cp, &[])
        .unwrap_or_else(|e| panic!("starting n2's tunnel: {e}"));
    let mut env1 = tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp));
    set_env(&mut env1, "XDS_ADDRESS", &format!("https://{istiod_addr}"));
    set_env(&mut env1, "XDS_ROOT_CA", &istiod_root.display().to_string());
    set_env(&mut env1, "ALT_XDS_HOSTNAME", ISTIOD_NAME);
    let mut t1 = topo
        .start_tunnel("n1", bin(), &env_refs(&env1))
        .unwrap_or_else(|e| panic!("starting n1's tunnel on the stand-in istiod: {e}"));
    t1.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("n1's tunnel never became ready on istiod's push: {e}"));

    // The first push: ACKed, the two newer-istiod resources skipped, everything else held.
    assert_eventually!(
        istiod.reply_to("n1").is_some() || istiod.reply_to("n2").is_some(),
        WAIT,
        "the tunnel answered the first pushes"
    );
    assert_eq!(istiod.nacks(), Vec::<String>::new(), "no push NACKed");
    let held = t1.xds_type(ADDRESS_TYPE_URL).expect("n1's xDS state");
    let pushed = initial_push();
    assert_eq!(held.nacks, 0, "{held:?}");
    assert_eq!(
        held.ignored, 2,
        "the future tunnel protocol and LB mode skipped: {held:?}"
    );
    assert_eq!(
        held.versions.len(),
        pushed.len() - 2,
        "every other resource held: {held:?}"
    );
    assert!(
        !held.versions.contains_key("Kubernetes//Pod/default/future"),
        "{held:?}"
    );
    assert!(
        held.versions.contains_key("Kubernetes//Pod/default/server"),
        "{held:?}"
    );
    let log = t1.log();
    assert!(
        log.contains("tunnel_protocol") && log.contains("42"),
        "the skip is logged naming the field and value:\n{}",
        t1.log_tail(20)
    );

    let echo = Server::start(
        topo.ns("n2"),
        (addr::SERVER, ECHO_PORT).into(),
        echo_handler,
    )
    .unwrap();
    let roundtrip = |dst: SocketAddr, what: &str| {
        let mut s = topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT, dst))
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        echo_roundtrip(&mut s, what.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    // The server workload came with an unknown field: kept, and served over HBONE.
    roundtrip((addr::SERVER, ECHO_PORT).into(), "to the pod");
    roundtrip((addr::SERVICE_VIP, 80).into(), "through the VIP");
    assert_eq!(echo.accepted(), 2);

    // Pod IP reuse: the new pod arrives while the old one still holds the address ...
    let before = t1.xds_type(ADDRESS_TYPE_URL).unwrap();
    let nonce = istiod.push(vec![workload_resource(server_pod("server-v2"))], &[]);
    assert_eventually!(
        istiod.reply_to(&nonce).is_some(),
        WAIT,
        "the tunnel answered {nonce}"
    );
    assert_eq!(
        istiod.reply_to(&nonce),
        Some(None),
        "the new pod on a held IP is ACKed"
    );
    t1.wait_push_acked(
        ADDRESS_TYPE_URL,
        &before,
        &["Kubernetes//Pod/default/server-v2"],
        &[],
        WAIT,
    );
    roundtrip(
        (addr::SERVICE_VIP, 80).into(),
        "while two pods claim the IP",
    );
    // ... then the old one's removal: ACKed, the address now the new pod's.
    let before = t1.xds_type(ADDRESS_TYPE_URL).unwrap();
    let nonce = istiod.push(Vec::new(), &["Kubernetes//Pod/default/server"]);
    assert_eventually!(
        istiod.reply_to(&nonce).is_some(),
        WAIT,
        "the tunnel answered {nonce}"
    );
    assert_eq!(istiod.reply_to(&nonce), Some(None), "the removal is ACKed");
    t1.wait_push_acked(
        ADDRESS_TYPE_URL,
        &before,
        &[],
        &["Kubernetes//Pod/default/server"],
        WAIT,
    );
    roundtrip((addr::SERVICE_VIP, 80).into(), "after the old pod left");
    assert_eq!(istiod.nacks(), Vec::<String>::new(), "no push NACKed");
}
