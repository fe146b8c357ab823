//! Network gateways end to end: a client on network A reaches a service on network B only
//! through B's east-west gateway, with double HBONE, in real namespaces with real tunnels
//! configured over xDS by `nodetunnel-control`.
//!
//! Topology (`Topology::two_networks`): client 10.77.1.10 on n1 (network A, the default
//! network ""); server 10.77.2.10 on n2 (network `net-b`), endpoint of service `server`
//! (VIP 10.96.0.10:80 → 8080); the gateway node `gw` with the east-west gateway workload
//! `istio-system/eastwest` at 10.77.3.10, served by a tunnel with `EAST_WEST_GATEWAY=true`.
//! n1 and n2 have no route to each other; `gw` routes to both but does not forward packets.
//! The control plane listens on the gateway node (10.77.3.1), which both sides reach.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip, request_then_read_all};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, connect_from, namespaces_available, net, port, spiffe_id, Capture, ControlPlane,
    MeshConfig, Server, Service, Topology, Tunnel, Waypoint, Workload,
};

const SERVER_PORT: u16 = 8080;
const NET_B: &str = "net-b";
const SERVER_HOST: &str = "server.default.svc.cluster.local";
const GATEWAY_HOST: &str = "istio-system/eastwest.istio-system.svc.cluster.local";
const GATEWAY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// A service whose one endpoint (on `net-b`) names a gateway nobody knows.
const LOST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const WAIT: Duration = Duration::from_secs(15);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn on(ip: Ipv4Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

fn vip() -> SocketAddr {
    on(addr::SERVICE_VIP, 80)
}

/// The mesh: `client` on the default network; `server` on `net-b` behind the gateway (by
/// hostname when `gateway` is true, else naming none); the gateway workload and its service;
/// service `lost` whose endpoint names an unknown gateway.
fn mesh(gateway: bool) -> MeshConfig {
    let server_svc = Service::new("server", addr::SERVICE_VIP, &[(80, SERVER_PORT)]);
    let mut gw_svc = Service::new("eastwest", GATEWAY_VIP, &[(port::HBONE, port::HBONE)]);
    gw_svc.namespace = "istio-system".into();
    gw_svc.hostname = "eastwest.istio-system.svc.cluster.local".into();
    let lost_svc = Service::new("lost", LOST_VIP, &[(80, SERVER_PORT)]);
    let mut eastwest = Workload::new("eastwest", net::GATEWAY, "gw")
        .on_network(NET_B, None)
        .endpoint_of(&gw_svc, &[(port::HBONE, port::HBONE)]);
    eastwest.namespace = "istio-system".into();
    let via = gateway.then(|| Waypoint::by_hostname(GATEWAY_HOST, port::HBONE));
    MeshConfig {
        workloads: vec![
            Workload::new("client", addr::CLIENT, "n1"),
            Workload::new("server", addr::SERVER, "n2")
                .on_network(NET_B, via)
                .endpoint_of(&server_svc, &[(80, SERVER_PORT)]),
            Workload::new("lost", Ipv4Addr::new(10, 77, 2, 11), "n2")
                .on_network(
                    NET_B,
                    Some(Waypoint::on_network(
                        NET_B,
                        Ipv4Addr::new(10, 77, 3, 99),
                        15008,
                    )),
                )
                .endpoint_of(&lost_svc, &[(80, SERVER_PORT)]),
            eastwest,
        ],
        services: vec![server_svc, gw_svc, lost_svc],
        policies: Vec::new(),
    }
}

/// The three tunnels, the control plane and the topology.
struct Bed {
    // Drop order: tunnels before the topology removes their namespaces.
    client_side: Tunnel,
    gateway: Tunnel,
    server_side: Tunnel,
    _cp: ControlPlane,
    topo: Topology,
}

impl Bed {
    fn start(test: &str, cfg: &MeshConfig) -> Option<Bed> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = Topology::two_networks(test, Capture::ALL).expect("building the topology");
        let (cp, _mesh) = topo
            .start_mesh_control("gw", bin(), cfg)
            .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        let start = |node: &str, extra: &[(&str, &str)]| {
            topo.start_control_tunnel(node, bin(), &cp, extra)
                .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
        };
        let server_side = start("n2", &[("NETWORK", NET_B)]);
        let gateway = start("gw", &[("NETWORK", NET_B), ("EAST_WEST_GATEWAY", "true")]);
        let client_side = start("n1", &[]);
        Some(Bed {
            client_side,
            gateway,
            server_side,
            _cp: cp,
            topo,
        })
    }

    fn server(&self) -> Server {
        Server::start(
            self.topo.ns("n2"),
            on(addr::SERVER, SERVER_PORT),
            echo_handler,
        )
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

/// A 200 KiB pattern, so the bytes cross both layers in many HTTP/2 frames.
fn payload() -> Vec<u8> {
    (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// Client on network A → service on network B through the gateway: bytes intact; the client's
/// tunnel logs the gateway and the hostname target; the gateway logs only the outer identity
/// (the client's) and opaque forwarding to the server's tunnel, no destination identity; the
/// server's tunnel, reached from the gateway's address, verified the client's own identity on
/// the inner TLS.
#[test]
fn a_service_on_another_network_is_reached_through_its_gateway_with_double_hbone() {
    let Some(bed) = Bed::start("netgw_path", &mesh(true)) else {
        return;
    };
    // No route between the networks: only the gateway node is reachable from either side.
    for (node, other) in [("n1", addr::SERVER), ("n2", addr::CLIENT)] {
        let route = bed.topo.ns(node).ip(&["route", "get", &other.to_string()]);
        assert!(route.is_err(), "{node} has a route to {other}: {route:?}");
    }
    let server = bed.server();
    let data = payload();
    let mut stream = bed.connect(vip());
    echo_roundtrip(&mut stream, &data).unwrap_or_else(|e| panic!("echo via the gateway: {e}"));
    drop(stream);

    let client_id = spiffe_id("default", "client");
    let target = format!("{SERVER_HOST}:80");
    let out = bed.client_side.wait_access_line(
        &[
            ("direction", "outbound"),
            ("original_dst", &vip().to_string()),
        ],
        WAIT,
    );
    assert!(!out.contains("flag="), "{out}");
    let gateway_hbone = on(net::GATEWAY, port::HBONE).to_string();
    assert_eq!(
        field(&out, "dst.network_gateway"),
        Some(gateway_hbone.as_str()),
        "{out}"
    );
    assert_eq!(
        field(&out, "dst.hbone_addr"),
        Some(target.as_str()),
        "{out}"
    );
    assert_eq!(
        field(&out, "dst.identity"),
        Some(spiffe_id("default", "server").as_str()),
        "{out}"
    );

    let at_gateway = bed
        .gateway
        .wait_access_line(&[("direction", "inbound"), ("forwarded", "opaque")], WAIT);
    assert!(!at_gateway.contains("flag="), "{at_gateway}");
    assert_eq!(
        field(&at_gateway, "src.identity"),
        Some(client_id.as_str()),
        "{at_gateway}"
    );
    assert_eq!(
        field(&at_gateway, "dst.hbone_addr"),
        Some(target.as_str()),
        "{at_gateway}"
    );
    let server_tunnel = on(addr::SERVER, port::HBONE).to_string();
    assert_eq!(
        field(&at_gateway, "dst.addr"),
        Some(server_tunnel.as_str()),
        "{at_gateway}"
    );
    assert_eq!(
        field(&at_gateway, "dst.identity"),
        None,
        "the gateway verified no inner identity: {at_gateway}"
    );

    let inbound = bed.server_side.wait_access_line(
        &[
            ("direction", "inbound"),
            ("dst.addr", &on(addr::SERVER, SERVER_PORT).to_string()),
        ],
        WAIT,
    );
    assert!(!inbound.contains("flag="), "{inbound}");
    assert_eq!(
        field(&inbound, "src.identity"),
        Some(client_id.as_str()),
        "{inbound}"
    );
    let src = field(&inbound, "src.addr").unwrap_or_default();
    assert!(
        src.starts_with(&format!("{}:", net::GATEWAY_NODE)),
        "the bytes came from the gateway node, the identity from the client: {inbound}"
    );
    // The server's tunnel saw no stream without an identity, and nothing else on the way.
    assert_eq!(server.accepted(), 1);
}

/// Fail closed: a destination on another network that names no gateway, and one whose
/// gateway the mesh does not know, are refused at the client's tunnel with flag
/// `network_gateway_unavailable` and the reason; nothing reaches the server or the gateway.
#[test]
fn a_destination_on_another_network_without_a_usable_gateway_is_refused() {
    let Some(bed) = Bed::start("netgw_closed", &mesh(false)) else {
        return;
    };
    let server = bed.server();
    for (dst, reason) in [
        (vip(), "names no network gateway"),
        (on(LOST_VIP, 80), "is not in the mesh state"),
    ] {
        let mut stream = bed.connect(dst);
        let got = request_then_read_all(&mut stream, b"anyone there?")
            .unwrap_or_else(|e| panic!("client -> {dst}: neither answered nor closed: {e}"));
        assert!(got.is_empty(), "client -> {dst} got an answer: {got:?}");
        let line = bed.client_side.wait_access_line(
            &[
                ("original_dst", &dst.to_string()),
                ("flag", "network_gateway_unavailable"),
            ],
            WAIT,
        );
        assert!(line.contains(reason), "{line}");
        assert!(
            line.contains(NET_B),
            "the log names the other network: {line}"
        );
    }
    assert_eq!(server.accepted(), 0);
    assert!(
        !bed.gateway.log().contains("forwarded=opaque"),
        "nothing reached the gateway"
    );
}
