//! End-to-end: ServiceEntry shapes istiod sends, served by the real `nodetunnel-control` over
//! delta xDS to two real `nodetunnel` processes (dedicated mode, iptables capture):
//! - a service whose endpoint is known by hostname only (`resolution: DNS`): the tunnel looks
//!   the name up when the connection is made (a real DNS server in n1, the tunnel's resolver
//!   via `/etc/netns/<n1>/resolv.conf`) and connects to the answer;
//! - the same with a name that does not resolve: refused with the lookup's reason;
//! - a service answering on a CIDR range (`cidrVips`): any address in the range reaches its
//!   endpoint over HBONE.
//!
//! Before this, the tunnel held the hostname endpoint but refused every connection to it
//! ("has no address"), and a CIDR VIP (an address with a prefix length) was read as one
//! address, so the rest of the range passed through unmeshed.
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10), n2 10.77.2.1 (mesh server
//! 10.77.2.10, non-mesh `plain` 10.77.2.20 standing in for the external host); the control
//! plane runs in n1.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::ADDRESS_TYPE_URL;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, namespaces_available, Capture, ControlPlane, DnsServer,
    MeshConfig, Server, Service, Topology, Tunnel, Workload,
};

const ECHO_PORT: u16 = 8080;
/// The external host's port, reached through the hostname endpoint.
const EXTERNAL_PORT: u16 = 9443;
const EXTERNAL_TAG: &[u8] = b"the external api\n";
const API_HOST: &str = "api.external.test";
const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
/// A service whose endpoint's name the DNS server does not know.
const GONE_HOST: &str = "nowhere.external.test";
const GONE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 81);
/// The range of the CIDR-VIP service.
const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 128, 0), 24);
const LOG_DEADLINE: Duration = Duration::from_secs(10);

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// The standard mesh plus the ServiceEntry-shaped services.
fn service_entry_mesh() -> MeshConfig {
    let mut cfg = MeshConfig::standard(ECHO_PORT);
    let api = Service {
        hostname: API_HOST.into(),
        ..Service::new("api", API_VIP, &[(80, EXTERNAL_PORT)])
    };
    let gone = Service {
        hostname: "gone.external.test".into(),
        ..Service::new("gone", GONE_VIP, &[(80, EXTERNAL_PORT)])
    };
    let mut range = Service::new("range", RANGE.0, &[(80, ECHO_PORT)]);
    range.vips.clear();
    range.cidr_vips = vec![RANGE];
    cfg.workloads.push(
        Workload::by_hostname("api-dns", API_HOST, "").endpoint_of(&api, &[(80, EXTERNAL_PORT)]),
    );
    cfg.workloads.push(
        Workload::by_hostname("gone-dns", GONE_HOST, "").endpoint_of(&gone, &[(80, EXTERNAL_PORT)]),
    );
    let server = cfg.workload_mut("server");
    *server = server.clone().endpoint_of(&range, &[(80, ECHO_PORT)]);
    cfg.services.extend([api, gone, range]);
    cfg
}

struct Cluster {
    topo: Topology,
    _cp: ControlPlane,
    t1: Tunnel,
    _t2: Tunnel,
    dns: DnsServer,
    _servers: [Server; 2],
}

fn start(test: &str, cfg: &MeshConfig) -> Option<Cluster> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
    // Before n1's tunnel starts: `ip netns exec` mounts the namespace's resolv.conf at exec.
    let dns = DnsServer::start(topo.ns("n1"), &[(API_HOST, addr::NON_MESH)])
        .expect("starting the DNS server in n1");
    let (cp, _mesh) = topo
        .start_mesh_control("n1", bin(), cfg)
        .unwrap_or_else(|e| panic!("the control plane must load the mesh: {e}"));
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
    let external = Server::start(
        topo.ns("n2"),
        (addr::NON_MESH, EXTERNAL_PORT).into(),
        |mut s: std::net::TcpStream| s.write_all(EXTERNAL_TAG),
    )
    .unwrap();
    let want = cfg.workloads.len() + cfg.services.len();
    for (node, t) in [("n1", &t1), ("n2", &t2)] {
        let s = t
            .xds_type(ADDRESS_TYPE_URL)
            .expect("the tunnel's xDS state");
        assert_eq!(
            (s.versions.len(), s.nacks, s.ignored),
            (want, 0, 0),
            "{node}: every workload and service accepted, none NACKed or skipped: {s:?}"
        );
    }
    Some(Cluster {
        topo,
        _cp: cp,
        t1,
        _t2: t2,
        dns,
        _servers: [echo, external],
    })
}

impl Cluster {
    /// Connects from the client to `dst` and reads until the far side closes.
    fn read_all_from(&self, dst: SocketAddr) -> std::io::Result<Vec<u8>> {
        self.topo.ns("n1").run(move || {
            let mut s = connect_from(addr::CLIENT, dst)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        })
    }

    fn wait_for_log(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        assert_eventually!(
            self.t1.log().lines().any(&wanted),
            LOG_DEADLINE,
            "n1's log has {what}; tail:\n{}",
            self.t1.log_tail(15)
        );
    }
}

#[test]
fn hostname_endpoints_are_looked_up_and_cidr_vips_cover_their_range() {
    let cfg = service_entry_mesh();
    let Some(c) = start("service_entries", &cfg) else {
        return;
    };

    // The hostname endpoint: the tunnel asks DNS, then connects to the answer's port 9443.
    let got = c
        .read_all_from((API_VIP, 80).into())
        .expect("client → the DNS service entry's VIP");
    assert_eq!(got, EXTERNAL_TAG, "the external host answered");
    assert!(
        c.dns.a_queries(API_HOST) >= 1,
        "the tunnel asked the namespace's DNS server for {API_HOST}"
    );
    let external = format!("{}:{EXTERNAL_PORT}", addr::NON_MESH);
    c.wait_for_log("the connection to the looked-up address", |l| {
        l.contains("outbound") && l.contains(&external) && !l.contains("error")
    });

    // The name that does not resolve: refused, with the lookup and the name in the log.
    let got = c.read_all_from((GONE_VIP, 80).into()).unwrap_or_default();
    assert!(
        got.is_empty(),
        "nothing answered for an unresolvable endpoint: {got:?}"
    );
    c.wait_for_log("the failed lookup", |l| {
        l.contains("dns_lookup_failed") && l.contains(GONE_HOST)
    });

    // The CIDR VIP: an address in the range, not the range's first, reaches the endpoint
    // over HBONE.
    for last in [1u8, 77, 254] {
        let [a, b, c3, _] = RANGE.0.octets();
        let dst: SocketAddr = (Ipv4Addr::new(a, b, c3, last), 80).into();
        let mut s = c
            .topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT, dst))
            .unwrap_or_else(|e| panic!("client → {dst}: {e}"));
        echo_roundtrip(&mut s, b"via the range")
            .unwrap_or_else(|e| panic!("the echo through {dst} over HBONE: {e}"));
    }
    c.wait_for_log("an HBONE connection through the range", |l| {
        l.contains("10.96.128.77:80") && l.contains("HBONE")
    });
}
