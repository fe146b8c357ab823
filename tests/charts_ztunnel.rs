//! The tunnel under Istio's ztunnel chart, unchanged: started with exactly the args and env of
//! `tests/fixtures/charts/ztunnel.env` (the chart's istio-proxy container, rendered for its
//! default values) — no variable inherited from the shell running the tests — in shared mode
//! (the chart never sets `PROXY_MODE`), fed pods by a ZDS agent, with the worker count the
//! chart's CPU variables imply, HBONE traffic between pods on two nodes and a SIGTERM drain at
//! the deadline the chart's grace period implies.
//!
//! Overridden, and only these (each marked where it is set, in [`chart_launch`]):
//! - `XDS_ADDRESS`, `CA_ADDRESS`: the chart's `istiod.istio-system.svc:15012` needs cluster DNS;
//!   here it is the standalone control plane (xDS and CA on one port, as istiod) on node n1's
//!   address in the test namespaces.
//! - `XDS_ROOT_CA`, `CA_ROOT_CA`, `XDS_AUTH_TOKEN`, `CA_AUTH_TOKEN`: not in the chart's env; the
//!   chart mounts istiod's root and the projected token at the default paths
//!   (`/var/run/secrets/istio/root-cert.pem`, `/var/run/secrets/tokens/istio-token`), which the
//!   test must not write on the real host, so it names its own files.
//! - `INPOD_UDS`: not in the chart's env; the chart mounts the node agent's socket directory at
//!   the default `/var/run/ztunnel`, here one socket per test node.
//! - `NODE_NAME`: the fixture's example pod is on `node-a`; here the testbed node the tunnel runs
//!   on, which the control plane binds each node's token to and the mesh's workloads name.
//!
//! The second test starts the binary against gRPC servers in the test that record the request
//! metadata: `XDS_HEADER_*` / `CA_HEADER_*` reach the control plane and the CA, and
//! `ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME` are the names their certificates are checked against.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use nodetunnel_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use nodetunnel_proto::istio::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use nodetunnel_proto::istio::auth::{IstioCertificateRequest, IstioCertificateResponse};
use nodetunnel_testbed::netns::unique_prefix;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, generate_ca, namespaces_available, sibling_binary,
    ControlPlane, EnvMode, InpodMesh, InpodRules, MeshBins, MeshConfig, Netns, PodTopology, Server,
    ServerPki, Tunnel, TunnelLaunch, ZDS_AGENT_BIN,
};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server as GrpcServer, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const SERVER_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// The chart's container: its args, and its env in chart order.
struct Fixture {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/charts/ztunnel.env"
    );
    let text = std::fs::read_to_string(path).expect("reading the chart fixture");
    let mut f = Fixture {
        args: Vec::new(),
        env: Vec::new(),
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some(("arg", word)) => f.args.push(word.to_string()),
            Some(("env", pair)) => {
                let (k, v) = pair.split_once('=').expect("env NAME=value");
                f.env.push((k.to_string(), v.to_string()));
            }
            _ => panic!("not a fixture line: {line:?}"),
        }
    }
    f
}

/// The chart's args and env for the tunnel on `node`, with the overrides the module doc lists.
fn chart_launch(f: &Fixture, node: &str, socket: &Path, cp: &ControlPlane) -> TunnelLaunch {
    let path = |p: &Path| p.display().to_string();
    // (variable, value, in the chart's env?)
    let overrides = [
        // No cluster DNS: the standalone control plane stands in for istiod.
        ("XDS_ADDRESS", cp.url(), true),
        ("CA_ADDRESS", cp.url(), true),
        // The chart's mounts at the default paths, remapped to the test's files.
        ("XDS_ROOT_CA", path(&cp.root_cert()), false),
        ("CA_ROOT_CA", path(&cp.root_cert()), false),
        ("XDS_AUTH_TOKEN", path(&cp.node_token_file(node)), false),
        ("CA_AUTH_TOKEN", path(&cp.node_token_file(node)), false),
        ("INPOD_UDS", path(socket), false),
        // The kubelet's spec.nodeName: the testbed node this tunnel runs on.
        ("NODE_NAME", node.to_string(), true),
    ];
    let mut env = f.env.clone();
    for (key, value, in_chart) in overrides {
        let present = env.iter().any(|(k, _)| k == key);
        assert_eq!(
            present, in_chart,
            "{key}: the fixture changed; revisit the override"
        );
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value));
    }
    TunnelLaunch {
        args: f.args.clone(),
        env,
        env_mode: EnvMode::Exact,
    }
}

#[test]
fn the_tunnel_runs_under_the_ztunnel_charts_args_and_env() {
    let test = "charts_ztunnel";
    if !namespaces_available(test) {
        return;
    }
    let f = fixture();
    assert_eq!(f.args, ["proxy", "ztunnel"]);
    assert!(
        !f.env.iter().any(|(k, _)| k == "PROXY_MODE"),
        "the chart sets no PROXY_MODE: this test relies on the default being shared"
    );
    let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
    let config = topo.path("mesh.yaml");
    MeshConfig::standard(SERVER_PORT)
        .write(&config)
        .expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let control_bin = sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary");
    let cp = topo
        .start_control_plane("n1", &control_bin, &config, &ca, &[])
        .expect("starting the control plane");
    let zds_agent = sibling_binary(ZDS_AGENT_BIN).expect("the ZDS agent binary");
    let bins = MeshBins {
        tunnel: bin(),
        zds_agent: &zds_agent,
    };
    // Every mesh pod enrolled over ZDS and both tunnels ready: shared mode, from the default.
    let mut mesh = InpodMesh::start_launched(&topo, bins, |node, socket| {
        chart_launch(&f, node, socket, &cp)
    })
    .expect("the tunnels under the chart's env");

    // The node id the control plane saw is built from the chart's downward-API values.
    let connections = cp
        .status("/debug/connections")
        .expect("the control plane's connections");
    assert!(
        connections.contains(
            "ztunnel~10.244.0.17~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local"
        ),
        "{connections}"
    );

    // Worker sizing from the chart's CPU variables, whatever this machine has: a quarter of
    // ZTUNNEL_CPU_LIMIT=4 rounded up is 1, raised to ztunnel's floor of 2.
    for (node, tunnel) in mesh.tunnels() {
        assert!(
            tunnel
                .log()
                .contains("starting the data path runtime worker_threads=2"),
            "{node}: {}",
            tunnel.log_tail(20)
        );
    }

    // Pod to pod across nodes, over HBONE.
    let server_pod = topo.pod("server");
    let _server = Server::start(
        server_pod.ns(),
        (server_pod.ip(), SERVER_PORT).into(),
        echo_handler,
    )
    .expect("starting the server");
    let dst: SocketAddr = (addr::SERVER, SERVER_PORT).into();
    let client = topo.pod("client");
    let client_ip = client.ip();
    let connect = || {
        let s = client
            .ns()
            .run(move || connect_from(client_ip, dst))
            .expect("connecting from the client pod");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    };
    let mut first = connect();
    echo_roundtrip(&mut first, b"hello through the chart's tunnel").expect("echo");
    drop(first);
    let inbound = mesh.tunnel("n2").wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            (
                "src.identity",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
        ],
        WAIT,
    );
    assert!(inbound.contains("sa/server"), "{inbound}");

    // SIGTERM drains at the deadline the chart's 30 s grace period implies (25 s): a live
    // connection keeps working, and the tunnel exits cleanly once it ends.
    let mut live = connect();
    echo_roundtrip(&mut live, b"before SIGTERM").expect("echo before SIGTERM");
    mesh.tunnel("n1").signal_term().expect("SIGTERM");
    assert_eventually!(
        mesh.tunnel("n1").log().contains("draining every pod"),
        WAIT,
        "no drain after SIGTERM:\n{}",
        mesh.tunnel("n1").log_tail(20)
    );
    let drain_line = mesh
        .tunnel("n1")
        .log()
        .lines()
        .find(|l| l.contains("draining every pod"))
        .map(str::to_string)
        .unwrap();
    assert!(drain_line.contains("deadline=25s"), "{drain_line}");
    echo_roundtrip(&mut live, b"after SIGTERM, while draining").expect("echo while draining");
    assert!(
        mesh.tunnel_mut("n1").try_wait().unwrap().is_none(),
        "exited while a connection was live"
    );
    drop(live);
    let mut status = None;
    assert_eventually!(
        {
            status = mesh.tunnel_mut("n1").try_wait().unwrap();
            status.is_some()
        },
        WAIT,
        "the tunnel did not exit after its last connection ended:\n{}",
        mesh.tunnel("n1").log_tail(20)
    );
    assert!(status.unwrap().success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Headers and alternate host names: gRPC servers in the test that record what they receive.

/// The request metadata each service received, in arrival order.
#[derive(Clone, Default)]
struct Seen {
    xds: Arc<Mutex<Vec<MetadataMap>>>,
    ca: Arc<Mutex<Vec<MetadataMap>>>,
}

impl Seen {
    fn first(list: &Mutex<Vec<MetadataMap>>) -> Option<MetadataMap> {
        list.lock().unwrap().first().cloned()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Seen {
    type StreamAggregatedResourcesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        tokio_stream::Pending<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("only delta xDS"))
    }

    /// Records the metadata and keeps the stream open without answering.
    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.xds.lock().unwrap().push(request.metadata().clone());
        Ok(Response::new(tokio_stream::pending()))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Seen {
    /// Records the metadata and refuses (the tunnel retries; the test only reads headers).
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.ca.lock().unwrap().push(request.metadata().clone());
        Err(Status::unavailable("this CA only records requests"))
    }
}

/// The name in the servers' certificate: not the address the tunnel dials.
const ALT_NAME: &str = "istiod.alt.example";

/// Both services on one TLS port inside `ns` (as istiod serves them), certificate for
/// [`ALT_NAME`] only; returns the address and the root to trust.
fn start_servers(
    ns: &Netns,
    dir: &Path,
    seen: &Seen,
) -> (tokio::runtime::Runtime, SocketAddr, PathBuf) {
    let pki =
        ServerPki::generate(ALT_NAME, dir, "root-cert.pem").expect("the servers' certificate");

    let listener = ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the servers' port in the namespace");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ads, ca) = (seen.clone(), seen.clone());
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        GrpcServer::builder()
            .tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(pki.cert_pem, pki.key_pem)),
            )
            .unwrap()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .add_service(IstioCertificateServiceServer::new(ca))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (rt, addr, pki.root)
}

fn launch(env: &[(&str, &str)]) -> TunnelLaunch {
    TunnelLaunch {
        args: Vec::new(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        env_mode: EnvMode::Exact,
    }
}

fn header<'a>(md: &'a MetadataMap, name: &str) -> Option<&'a str> {
    md.get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn xds_and_ca_headers_and_alternate_hostnames_reach_the_servers() {
    if !namespaces_available("xds_and_ca_headers_and_alternate_hostnames_reach_the_servers") {
        return;
    }
    let ns = Netns::create(&format!("{}-hdr", unique_prefix())).expect("a namespace");
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let (_rt, addr, root) = start_servers(&ns, dir.path(), &seen);
    let url = format!("https://{addr}");
    let root_s = root.display().to_string();
    let log = |name: &str| dir.path().join(name);

    // xDS: the tunnel dials 127.0.0.1 but checks the certificate against ALT_XDS_HOSTNAME, and
    // sends the XDS_HEADER_* metadata (not the CA's).
    let xds = Tunnel::spawn_launch(
        &ns,
        bin(),
        &launch(&[
            ("PROXY_MODE", "dedicated"),
            ("FAKE_CA", "true"),
            ("XDS_ADDRESS", &url),
            ("XDS_ROOT_CA", &root_s),
            ("ALT_XDS_HOSTNAME", ALT_NAME),
            ("XDS_HEADER_X_TENANT", "blue"),
            ("XDS_HEADER_X-ROUTE", "east-west"),
            ("CA_HEADER_X_NOT_FOR_XDS", "1"),
            ("RUST_LOG", "info"),
        ]),
        &log("xds.log"),
    )
    .expect("starting the xDS tunnel");
    assert_eventually!(
        Seen::first(&seen.xds).is_some(),
        WAIT,
        "no xDS stream reached the server:\n{}",
        xds.log_tail(20)
    );
    let md = Seen::first(&seen.xds).unwrap();
    assert_eq!(header(&md, "x_tenant"), Some("blue"), "{md:?}");
    assert_eq!(header(&md, "x-route"), Some("east-west"), "{md:?}");
    assert_eq!(header(&md, "x_not_for_xds"), None, "{md:?}");
    assert_eq!(header(&md, "clusterid"), Some("Kubernetes"), "{md:?}");
    drop(xds);

    // The CA: a dedicated tunnel with a local mesh file fetches its node's certificates at
    // start, through CA_ADDRESS, with ALT_CA_HOSTNAME and the CA_HEADER_* metadata.
    let mesh = dir.path().join("mesh.yaml");
    MeshConfig::standard(SERVER_PORT)
        .write(&mesh)
        .expect("writing the mesh config");
    let ca = Tunnel::spawn_launch(
        &ns,
        bin(),
        &launch(&[
            ("PROXY_MODE", "dedicated"),
            ("LOCAL_XDS_PATH", &mesh.display().to_string()),
            ("NODE_NAME", "n1"),
            ("CA_ADDRESS", &url),
            ("CA_ROOT_CA", &root_s),
            ("ALT_CA_HOSTNAME", ALT_NAME),
            ("CA_HEADER_X_CA_TENANT", "green"),
            ("XDS_HEADER_X_NOT_FOR_CA", "1"),
            ("RUST_LOG", "info"),
        ]),
        &log("ca.log"),
    )
    .expect("starting the CA tunnel");
    assert_eventually!(
        Seen::first(&seen.ca).is_some(),
        WAIT,
        "no certificate request reached the CA:\n{}",
        ca.log_tail(20)
    );
    let md = Seen::first(&seen.ca).unwrap();
    assert_eq!(header(&md, "x_ca_tenant"), Some("green"), "{md:?}");
    assert_eq!(header(&md, "x_not_for_ca"), None, "{md:?}");
    drop(ca);

    // Without the alternate name the certificate does not match 127.0.0.1: nothing reaches
    // the server, and the tunnel says why.
    let before = seen.xds.lock().unwrap().len();
    let plain = Tunnel::spawn_launch(
        &ns,
        bin(),
        &launch(&[
            ("PROXY_MODE", "dedicated"),
            ("FAKE_CA", "true"),
            ("XDS_ADDRESS", &url),
            ("XDS_ROOT_CA", &root_s),
            ("RUST_LOG", "info"),
        ]),
        &log("plain.log"),
    )
    .expect("starting the tunnel without ALT_XDS_HOSTNAME");
    assert_eventually!(
        plain.log().contains("not valid for name"),
        WAIT,
        "no certificate name error:\n{}",
        plain.log_tail(20)
    );
    assert_eq!(seen.xds.lock().unwrap().len(), before);
}
