//! Waypoints end to end: client → n1's tunnel → waypoint → n2's tunnel → server, in real
//! namespaces with real tunnels configured over xDS by `nodetunnel-control`.
//!
//! Topology (`Topology::two_node`): client 10.77.1.10 on n1; server 10.77.2.10 on n2 behind
//! VIP 10.96.0.10:80 → 8080. The waypoint is a stand-in (`nodetunnel_testbed::waypoint`, an
//! HBONE server with a mesh certificate for `spiffe://cluster.local/ns/default/sa/waypoint`)
//! on the non-mesh address 10.77.2.20, port 15088; the mesh lists it as workload `waypoint`
//! (node `wp`, served by no tunnel), the endpoint of service `waypoint.default.svc.cluster.local`.
//! The stand-in forwards every CONNECT to the server's tunnel, target `10.77.2.10:8080`.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip, request_then_read_all};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    spiffe_id, tunnel_env, Ca, Capture, ControlPlane, Match, Mesh, MeshConfig, Policy, RawHbone,
    Server, Service, StringMatch, TestCa, Topology, Tunnel, Waypoint, WaypointStandIn, Workload,
};

const SERVER_PORT: u16 = 8080;
const WAYPOINT_PORT: u16 = 15088;
const WAYPOINT_HOST: &str = "default/waypoint.default.svc.cluster.local";
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WAIT: Duration = Duration::from_secs(15);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn control_bin() -> PathBuf {
    nodetunnel_testbed::sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn on(ip: Ipv4Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

fn vip() -> SocketAddr {
    on(addr::SERVICE_VIP, 80)
}

fn server_addr() -> SocketAddr {
    on(addr::SERVER, SERVER_PORT)
}

fn waypoint_addr() -> SocketAddr {
    on(addr::NON_MESH, WAYPOINT_PORT)
}

/// The standard mesh plus the waypoint workload and its service; when `attached`, the server
/// service and the server workload both name it (by hostname).
fn mesh(attached: bool) -> MeshConfig {
    let wp_service = Service::new("waypoint", WAYPOINT_VIP, &[(WAYPOINT_PORT, WAYPOINT_PORT)]);
    let mut cfg = MeshConfig::standard(SERVER_PORT).with_workload(
        Workload::new("waypoint", addr::NON_MESH, "wp")
            .endpoint_of(&wp_service, &[(WAYPOINT_PORT, WAYPOINT_PORT)]),
    );
    cfg.services.push(wp_service);
    if attached {
        attach(
            &mut cfg,
            Waypoint::by_hostname(WAYPOINT_HOST, WAYPOINT_PORT),
        );
    }
    cfg
}

/// Makes the server service and workload name `waypoint`.
fn attach(cfg: &mut MeshConfig, waypoint: Waypoint) {
    cfg.services
        .iter_mut()
        .find(|s| s.name == "server")
        .expect("the server service")
        .waypoint = Some(waypoint.clone());
    cfg.workload_mut("server").waypoint = Some(waypoint);
}

/// Both tunnels configured by a control plane serving `cfg`, the mesh CA, and the topology.
struct Bed {
    // Drop order: the stand-in and tunnels before the topology removes their namespaces.
    waypoint: Option<WaypointStandIn>,
    t1: Tunnel,
    t2: Tunnel,
    cp: ControlPlane,
    mesh_file: PathBuf,
    ca: TestCa,
    topo: Topology,
}

impl Bed {
    fn start(test: &str, cfg: &MeshConfig) -> Option<Bed> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
        let mesh_file = topo.path("mesh.yaml");
        cfg.write(&mesh_file).expect("writing mesh.yaml");
        let ca_dir = topo.path("ca");
        std::fs::create_dir_all(&ca_dir).expect("creating the CA dir");
        generate_ca(bin(), &ca_dir).expect("nodetunnel generate-ca");
        let cp = topo
            .start_control_plane("n1", &control_bin(), &mesh_file, &ca_dir, &[])
            .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        let start = |node: &str| {
            let env = tunnel_env(node, Mesh::Control(&cp), Ca::Control(&cp));
            topo.start_tunnel(node, bin(), &env_refs(&env))
                .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
        };
        let t2 = start("n2");
        let t1 = start("n1");
        let ca = TestCa::load(&ca_dir).expect("loading the mesh CA");
        Some(Bed {
            waypoint: None,
            t1,
            t2,
            cp,
            mesh_file,
            ca,
            topo,
        })
    }

    /// Starts the waypoint stand-in on n2 (10.77.2.20:15088), forwarding to the server.
    fn start_waypoint(&mut self) {
        let cert = self
            .ca
            .issue(&spiffe_id("default", "waypoint"))
            .expect("issuing the waypoint's certificate");
        let wp = WaypointStandIn::start(
            self.topo.ns("n2"),
            SocketAddrV4::new(addr::NON_MESH, WAYPOINT_PORT),
            cert,
            self.ca.roots(),
            |_target| Some((on(addr::SERVER, port::HBONE), server_addr())),
        )
        .unwrap_or_else(|e| panic!("starting the waypoint stand-in: {e}"));
        self.waypoint = Some(wp);
    }

    fn waypoint(&self) -> &WaypointStandIn {
        self.waypoint.as_ref().expect("the waypoint stand-in")
    }

    fn server(&self) -> Server {
        Server::start(self.topo.ns("n2"), server_addr(), echo_handler)
            .unwrap_or_else(|e| panic!("starting the server: {e}"))
    }

    /// A captured connection from the client on n1 to `dst`.
    fn connect(&self, dst: SocketAddr) -> TcpStream {
        self.topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT, dst))
            .unwrap_or_else(|e| panic!("connect client -> {dst}: {e}"))
    }
}

/// Echoes `payload` over a new client connection to `dst`; panics if the bytes differ.
fn echo_through(bed: &Bed, dst: SocketAddr, payload: &[u8]) {
    let mut stream = bed.connect(dst);
    echo_roundtrip(&mut stream, payload).unwrap_or_else(|e| panic!("echo via {dst}: {e}"));
}

/// Panics unless a client connection to `dst` is closed without an answer.
fn assert_refused(bed: &Bed, dst: SocketAddr) {
    let mut stream = bed.connect(dst);
    let got = request_then_read_all(&mut stream, b"anyone there?")
        .unwrap_or_else(|e| panic!("client -> {dst}: neither answered nor closed: {e}"));
    assert!(got.is_empty(), "client -> {dst} got an answer: {got:?}");
}

/// A 200 KiB pattern, so the bytes cross the waypoint in many HTTP/2 frames.
fn payload() -> Vec<u8> {
    (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// The full path for a VIP and for the server's own address: bytes intact, the waypoint sees
/// the client's identity and the original destination as CONNECT target, the server's tunnel
/// sees the waypoint's identity, and n1's log names the waypoint it went through.
#[test]
fn traffic_to_a_destination_with_a_waypoint_goes_through_it() {
    let Some(mut bed) = Bed::start("waypoint_path", &mesh(true)) else {
        return;
    };
    bed.start_waypoint();
    let server = bed.server();
    let data = payload();

    echo_through(&bed, vip(), &data);
    let hops = bed.waypoint().hops();
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(hops[0].target, vip().to_string(), "the VIP as dialed");
    assert_eq!(hops[0].peer_identity, spiffe_id("default", "client"));
    assert_eq!(
        hops[0].upstream_identity.as_deref(),
        Some(spiffe_id("default", "server").as_str())
    );
    assert_eq!(hops[0].upstream_status, Ok(200));

    let out = bed.t1.wait_access_line(
        &[
            ("direction", "outbound"),
            ("original_dst", &vip().to_string()),
        ],
        WAIT,
    );
    assert_eq!(
        field(&out, "dst.waypoint"),
        Some(waypoint_addr().to_string().as_str()),
        "{out}"
    );
    assert_eq!(
        field(&out, "dst.identity"),
        Some(spiffe_id("default", "waypoint").as_str()),
        "{out}"
    );
    let inbound = bed.t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("dst.addr", &server_addr().to_string()),
        ],
        WAIT,
    );
    assert_eq!(
        field(&inbound, "src.identity"),
        Some(spiffe_id("default", "waypoint").as_str()),
        "{inbound}"
    );
    assert!(!inbound.contains("flag="), "delivered: {inbound}");

    // Addressed to the server's own address: its workload waypoint, target as dialed.
    echo_through(&bed, server_addr(), b"to the pod address");
    let hops = bed.waypoint().hops();
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert_eq!(hops[1].target, server_addr().to_string());
    assert_eq!(hops[1].peer_identity, spiffe_id("default", "client"));
    assert_eq!(server.accepted(), 2);
}

/// A client that skips the waypoint — a raw HBONE client with the mesh's own `client`
/// certificate dialing the server's tunnel — is refused with 401, flagged `waypoint_bypass`;
/// so is one presenting the waypoint's identity from another address. The server sees nothing.
#[test]
fn going_around_the_waypoint_is_refused() {
    let Some(bed) = Bed::start("waypoint_bypass", &mesh(true)) else {
        return;
    };
    // n1 captures nothing now, so the raw client reaches n2's :15008 itself.
    bed.topo
        .node("n1")
        .set_capture(Capture::NONE)
        .expect("clearing n1's capture");
    let server = bed.server();
    for sa in ["client", "waypoint"] {
        let cert = bed.ca.issue(&spiffe_id("default", sa)).expect("issuing");
        let hbone = RawHbone::connect(
            bed.topo.ns("n1"),
            addr::CLIENT,
            on(addr::SERVER, port::HBONE),
            &cert,
            bed.ca.roots(),
        )
        .unwrap_or_else(|e| panic!("raw HBONE as {sa}: {e}"));
        let reply = hbone
            .connect_to(server_addr())
            .unwrap_or_else(|e| panic!("CONNECT as {sa}: {e}"));
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "as {sa}");
        let line = bed.t2.wait_access_line(
            &[
                ("flag", "waypoint_bypass"),
                ("src.identity", &spiffe_id("default", sa)),
            ],
            WAIT,
        );
        assert!(line.contains("has waypoint"), "{line}");
    }
    assert_eq!(server.accepted(), 0, "nothing reached the server");
}

/// Fail closed: a service naming a waypoint nobody knows, and a workload naming one whose
/// only instance is unhealthy, get refused at the client's tunnel (flag
/// `waypoint_unavailable`, the reason in the log); nothing is sent directly.
#[test]
fn an_unreachable_waypoint_refuses_the_connection() {
    let mut cfg = mesh(false);
    cfg.services
        .iter_mut()
        .find(|s| s.name == "server")
        .expect("the server service")
        .waypoint = Some(Waypoint::by_hostname(
        "default/missing.default.svc.cluster.local",
        WAYPOINT_PORT,
    ));
    cfg.workload_mut("server").waypoint = Some(Waypoint::by_ip(addr::NON_MESH, WAYPOINT_PORT));
    cfg.workload_mut("waypoint").healthy = false;
    let Some(mut bed) = Bed::start("waypoint_fail_closed", &cfg) else {
        return;
    };
    bed.start_waypoint();
    let server = bed.server();

    assert_refused(&bed, vip());
    let line = bed.t1.wait_access_line(
        &[
            ("original_dst", &vip().to_string()),
            ("flag", "waypoint_unavailable"),
        ],
        WAIT,
    );
    assert!(
        line.contains("which the mesh state does not know"),
        "{line}"
    );

    assert_refused(&bed, server_addr());
    let line = bed.t1.wait_access_line(
        &[
            ("original_dst", &server_addr().to_string()),
            ("flag", "waypoint_unavailable"),
        ],
        WAIT,
    );
    assert!(line.contains("which has no healthy instance"), "{line}");
    assert_eq!(server.accepted(), 0, "nothing went around the waypoint");
    assert!(bed.waypoint().hops().is_empty());
}

/// A waypoint attached at runtime (the control plane's mesh file changes, the tunnels get the
/// push) applies to the next connection: before, the server's tunnel sees the client; after,
/// the waypoint.
#[test]
fn a_waypoint_added_over_xds_applies_to_the_next_connection() {
    let mut cfg = mesh(false);
    let Some(mut bed) = Bed::start("waypoint_runtime", &cfg) else {
        return;
    };
    bed.start_waypoint();
    let _server = bed.server();

    echo_through(&bed, vip(), b"before");
    let direct = bed.t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("src.identity", &spiffe_id("default", "client")),
        ],
        WAIT,
    );
    assert!(!direct.contains("flag="), "{direct}");
    assert!(bed.waypoint().hops().is_empty());

    attach(
        &mut cfg,
        Waypoint::by_hostname(WAYPOINT_HOST, WAYPOINT_PORT),
    );
    cfg.write(&bed.mesh_file).expect("rewriting mesh.yaml");
    // Quiet until the control plane has reloaded: it watches the directory, where the tunnels'
    // logs grow with every connection, and reloads once the directory is still.
    assert_eventually!(
        bed.cp.log().contains("generation=2"),
        WAIT,
        "the control plane did not reload:\n{}",
        bed.cp.log_tail(10)
    );
    // Each attempt is a new connection; once n1 has the push, it goes through the waypoint.
    assert_eventually!(
        {
            let mut s = bed.connect(vip());
            let _ = echo_roundtrip(&mut s, b"after");
            !bed.waypoint().hops().is_empty()
        },
        WAIT,
        "no connection went through the waypoint after the push; control plane log:\n{}",
        bed.cp.log_tail(20)
    );
    let hop = &bed.waypoint().hops()[0];
    assert_eq!(hop.target, vip().to_string());
    assert_eq!(hop.peer_identity, spiffe_id("default", "client"));
    bed.t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("src.identity", &spiffe_id("default", "waypoint")),
        ],
        WAIT,
    );
}

/// Policy on the destination judges the waypoint's identity, not the client's: an ALLOW for
/// the client's principal alone refuses what the waypoint forwards (401 to the waypoint,
/// `policy_denied` with `src.identity` the waypoint's at the server's tunnel).
#[test]
fn destination_policy_sees_the_waypoint_as_the_source() {
    let mut cfg = mesh(true);
    cfg.policies
        .push(Policy::allow("default", "allow-client").rule([[
            Match::default().principal(StringMatch::exact("cluster.local/ns/default/sa/client")),
        ]]));
    let Some(mut bed) = Bed::start("waypoint_policy", &cfg) else {
        return;
    };
    bed.start_waypoint();
    let server = bed.server();

    assert_refused(&bed, vip());
    let line = bed.t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("flag", "policy_denied"),
            ("src.identity", &spiffe_id("default", "waypoint")),
        ],
        WAIT,
    );
    assert!(line.contains("default/allow-client"), "{line}");
    let hops = bed.waypoint().hops();
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(hops[0].peer_identity, spiffe_id("default", "client"));
    assert_eq!(hops[0].upstream_status, Ok(401));
    assert_eq!(server.accepted(), 0);
}
