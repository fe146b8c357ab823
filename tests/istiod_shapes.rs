//! End-to-end: a mesh shaped like what istiod sends for a real cluster, served by the real
//! `nodetunnel-control` over delta xDS to two real `nodetunnel` processes (dedicated mode,
//! iptables capture, HBONE between the nodes):
//! - host-network pods: several workloads on each node's IP (every host-network pod carries
//!   its node's address), some on another node;
//! - a ServiceEntry VIP shared by services of two namespaces, each namespace's clients reaching
//!   their own service's endpoint.
//!
//! Before the store kept every claimant, the control plane could not even load this mesh (two
//! workloads on one address were a conflict), and a tunnel NACKed such pushes whole.
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10, client2 10.77.1.11) and n2
//! 10.77.2.1 (server 10.77.2.10); the control plane runs in n1.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::http_get;
use nodetunnel_testbed::{
    addr, connect_from, namespaces_available, port, Capture, ControlPlane, MeshConfig, Protocol,
    Server, Service, Topology, Tunnel, Workload,
};

const ECHO_PORT: u16 = 8080;
/// Where the server answers for the `other` namespace's service: a tag, so the test sees
/// which service's endpoint port a connection reached.
const OTHER_PORT: u16 = 8081;
const OTHER_TAG: &[u8] = b"served for namespace other\n";
/// A ServiceEntry address both namespaces declare.
const SHARED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 77);

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// Host-network pods as istiod lists them: each with its node's IP, plain TCP (no tunnel in
/// front of a host-network pod), on its node.
fn host_network_pods(node: &str, ip: Ipv4Addr) -> Vec<Workload> {
    ["kube-proxy", "node-exporter", "csi-driver"]
        .into_iter()
        .map(|name| {
            let mut w = Workload::new(&format!("{name}-{node}"), ip, node)
                .service_account(name)
                .protocol(Protocol::Tcp);
            w.namespace = "kube-system".into();
            w.host_network = true;
            w
        })
        .collect()
}

/// The standard mesh plus host-network pods on both nodes and the shared VIP: `default`'s
/// service sends port 80 to the echo (8080), `other`'s to the tag server (8081); client2 lives
/// in `other`.
fn istiod_shaped_mesh() -> MeshConfig {
    let mut cfg = MeshConfig::standard(ECHO_PORT);
    cfg.workloads.extend(host_network_pods("n1", addr::NODE1));
    cfg.workloads.extend(host_network_pods("n2", addr::NODE2));
    cfg.workload_mut("client2").namespace = "other".into();

    let ext_default = Service {
        hostname: "ext.example.com".into(),
        ..Service::new("ext", SHARED_VIP, &[(80, ECHO_PORT)])
    };
    let ext_other = Service {
        namespace: "other".into(),
        ports: vec![(80, OTHER_PORT)],
        ..ext_default.clone()
    };
    let server = cfg.workload_mut("server");
    *server = server
        .clone()
        .endpoint_of(&ext_default, &[(80, ECHO_PORT)])
        .endpoint_of(&ext_other, &[(80, OTHER_PORT)]);
    cfg.services.push(ext_default);
    cfg.services.push(ext_other);
    cfg
}

struct Cluster {
    topo: Topology,
    _cp: ControlPlane,
    t1: Tunnel,
    t2: Tunnel,
    _echo: Server,
    _other: Server,
}

fn start(test: &str, cfg: &MeshConfig) -> Option<Cluster> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
    let (cp, _mesh) = topo
        .start_mesh_control("n1", bin(), cfg)
        .unwrap_or_else(|e| panic!("the control plane must load the istiod-shaped mesh: {e}"));
    let tunnel = |node: &str| {
        topo.start_control_tunnel(node, bin(), &cp, &[])
            .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
    };
    let t2 = tunnel("n2");
    let t1 = tunnel("n1");
    let echo = Server::start(
        topo.ns("n2"),
        (addr::SERVER, ECHO_PORT).into(),
        echo_handler,
    )
    .unwrap();
    let other = Server::start(
        topo.ns("n2"),
        (addr::SERVER, OTHER_PORT).into(),
        |mut s: std::net::TcpStream| s.write_all(OTHER_TAG),
    )
    .unwrap();
    Some(Cluster {
        topo,
        _cp: cp,
        t1,
        t2,
        _echo: echo,
        _other: other,
    })
}

/// One family's value from the tunnel's `/metrics`, for the address type.
fn address_metric(tunnel: &Tunnel, family: &str) -> Option<u64> {
    let (status, body) = tunnel
        .ns()
        .run(|| http_get(port::METRICS, "/metrics"))
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(family) && l.contains("istio.workload.Address"))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn host_network_pods_and_a_shared_vip_are_accepted_and_routed_as_ztunnel_would() {
    let cfg = istiod_shaped_mesh();
    let Some(c) = start("istiod_shapes", &cfg) else {
        return;
    };
    for (node, t) in [("n1", &c.t1), ("n2", &c.t2)] {
        assert_eq!(
            address_metric(t, "nodetunnel_xds_nacks"),
            Some(0),
            "{node}: every address push ACKed"
        );
        assert_eq!(
            address_metric(t, "nodetunnel_xds_resources"),
            Some((cfg.workloads.len() + cfg.services.len()) as u64),
            "{node}: every workload and service kept, the host-network pods sharing node IPs too"
        );
    }

    // The pod workloads on each node are still routed and served over HBONE, unaffected by
    // the host-network pods sharing node addresses.
    let mut s = c
        .topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT, (addr::SERVER, ECHO_PORT).into()))
        .expect("client → server");
    echo_roundtrip(&mut s, b"pod to pod").expect("the echo over HBONE");

    // The shared VIP: a client in `default` reaches default's service (the echo) ...
    let vip: SocketAddr = (SHARED_VIP, 80).into();
    let mut s = c
        .topo
        .ns("n1")
        .run(move || connect_from(addr::CLIENT, vip))
        .expect("client → shared VIP");
    echo_roundtrip(&mut s, b"via the shared VIP").expect("default's service answers");

    // ... and a client in `other` reaches other's (the tag on 8081).
    let mut s = c
        .topo
        .ns("n1")
        .run(move || connect_from(addr::CLIENT2, vip))
        .expect("client2 → shared VIP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("other's service answers");
    assert_eq!(
        got, OTHER_TAG,
        "client2 in `other` reached other's endpoint port"
    );
    drop(s); // the access line is written when the connection ends

    // It went over HBONE to the endpoint other's service chose, dialed as the shared VIP.
    let other_dst = format!("{}:{OTHER_PORT}", addr::SERVER);
    let line = c.t1.wait_access_line(
        &[("dst.addr", &other_dst), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    assert!(line.contains(&vip.to_string()), "the VIP is logged: {line}");
}
