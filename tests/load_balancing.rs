//! End-to-end: which endpoint of a service a connection reaches, as `istio.workload`'s load
//! balancing defines it — routing preference with FAILOVER and STRICT, capacity weights, the
//! health policy. The mesh file declares localities, capacities, readiness and each service's
//! `loadBalancer`; the real `nodetunnel-control` encodes them into the xDS resources and pushes
//! them to two real `nodetunnel` processes (dedicated mode, iptables capture, HBONE between
//! the nodes); every push is checked to be applied and ACKed by both tunnels before traffic.
//!
//! Topology: n1 10.77.1.1 with the client 10.77.1.10 (region r1, zone a); n2 10.77.2.1 with
//! three backends `be-a` 10.77.2.10, `be-b` .11, `be-c` .12, each an endpoint of service
//! `backend` (VIP 10.96.0.10, port 80 → 8080) whose server answers its own name, so the client
//! sees which endpoint the tunnel chose. Localities are the workloads' declared ones; all
//! backends run on n2, so only the declared locality distinguishes them.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use nodetunnel_testbed::traffic::request_then_read_all;
use nodetunnel_testbed::tunnel::{XdsTypeState, ADDRESS_TYPE_URL};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, namespaces_available, ControlPlane, LbScope,
    LoadBalancer, Locality, MeshConfig, NodeSpec, Server, Service, Topology, Tunnel, Workload,
};

const BACKEND_PORT: u16 = 8080;
const BACKENDS: [(&str, Ipv4Addr); 3] = [
    ("be-a", Ipv4Addr::new(10, 77, 2, 10)),
    ("be-b", Ipv4Addr::new(10, 77, 2, 11)),
    ("be-c", Ipv4Addr::new(10, 77, 2, 12)),
];
const SYNC_DEADLINE: Duration = Duration::from_secs(20);
const LOG_DEADLINE: Duration = Duration::from_secs(10);
/// The preferences of the locality tests: same region first, then same zone.
const REGION_ZONE: &[LbScope] = &[LbScope::Region, LbScope::Zone];

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn vip() -> SocketAddr {
    (addr::SERVICE_VIP, 80).into()
}

/// Service `backend` in `default` on the standard VIP, port 80 → 8080.
fn service(lb: Option<LoadBalancer>) -> Service {
    let s = Service::new("backend", addr::SERVICE_VIP, &[(80, BACKEND_PORT)]);
    match lb {
        Some(lb) => s.load_balancer(lb),
        None => s,
    }
}

/// Where the client runs: region r1, zone a.
fn client_locality() -> Locality {
    Locality::new("r1", "a", "")
}

/// Backend `name` (one of [`BACKENDS`]) as an endpoint of `svc`, in `region`/`zone`.
fn backend(svc: &Service, name: &str, region: &str, zone: &str) -> Workload {
    let ip = BACKENDS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no backend {name:?}"))
        .1;
    Workload::new(name, ip, "n2")
        .endpoint_of(svc, &[(80, BACKEND_PORT)])
        .locality(Locality::new(region, zone, ""))
}

/// The client plus `backends`, serving `svc`.
fn mesh(svc: Service, backends: Vec<Workload>) -> MeshConfig {
    let client = Workload::new("client", addr::CLIENT, "n1").locality(client_locality());
    MeshConfig {
        workloads: std::iter::once(client).chain(backends).collect(),
        services: vec![svc],
        policies: Vec::new(),
    }
}

/// The xDS resource name of backend `name` (its uid) and of the service.
fn uid(name: &str) -> String {
    Workload::new(name, addr::CLIENT, "n2").uid()
}

fn service_resource() -> String {
    let s = service(None);
    format!("{}/{}", s.namespace, s.hostname)
}

struct Lb {
    topo: Topology,
    _cp: ControlPlane,
    mesh: PathBuf,
    t1: Tunnel,
    t2: Tunnel,
    servers: Vec<Server>,
}

fn start(test: &str, cfg: &MeshConfig) -> Option<Lb> {
    if !namespaces_available(test) {
        return None;
    }
    let mut n2 = NodeSpec::new(addr::NODE2);
    for (name, ip) in BACKENDS {
        n2 = n2.pod(name, ip);
    }
    let topo = Topology::builder(test)
        .node("n1", NodeSpec::new(addr::NODE1).pod("client", addr::CLIENT))
        .node("n2", n2)
        .link("n1", "n2")
        .build()
        .expect("building the topology");
    let (cp, mesh) = topo
        .start_mesh_control("n1", bin(), cfg)
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let tunnel = |node: &str| {
        topo.start_control_tunnel(node, bin(), &cp, &[])
            .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
    };
    let t2 = tunnel("n2");
    let t1 = tunnel("n1");
    let servers = BACKENDS
        .iter()
        .map(|&(name, ip)| {
            let tag = format!("{name}\n");
            Server::start(
                topo.ns("n2"),
                (ip, BACKEND_PORT).into(),
                move |mut s: std::net::TcpStream| s.write_all(tag.as_bytes()),
            )
            .unwrap_or_else(|e| panic!("starting {name}'s server: {e}"))
        })
        .collect();
    let lb = Lb {
        topo,
        _cp: cp,
        mesh,
        t1,
        t2,
        servers,
    };
    // The first push: every resource of the file accepted, none NACKed or skipped.
    let want = cfg.workloads.len() + cfg.services.len();
    for t in [&lb.t1, &lb.t2] {
        let s = t
            .xds_type(ADDRESS_TYPE_URL)
            .expect("the tunnel's xDS state");
        assert_eq!(
            (s.versions.len(), s.nacks, s.ignored),
            (want, 0, 0),
            "every workload and service accepted: {s:?}"
        );
    }
    Some(lb)
}

impl Lb {
    fn address_states(&self) -> [XdsTypeState; 2] {
        [&self.t1, &self.t2].map(|t| t.xds_type(ADDRESS_TYPE_URL).expect("xDS state"))
    }

    /// Rewrites the mesh file and waits until both tunnels ACKed the push that brought new
    /// versions of `changed` (resource names) and removed `removed`.
    fn push(&self, cfg: &MeshConfig, changed: &[&str], removed: &[&str]) {
        let before = self.address_states();
        cfg.write(&self.mesh).expect("rewriting mesh.yaml");
        for (t, before) in [&self.t1, &self.t2].into_iter().zip(&before) {
            t.wait_push_acked(ADDRESS_TYPE_URL, before, changed, removed, SYNC_DEADLINE);
        }
    }

    /// One connection from the client to the VIP; what the backend answered.
    fn connect_once(&self) -> std::io::Result<Vec<u8>> {
        self.topo.ns("n1").run(|| {
            let mut s = connect_from(addr::CLIENT, vip())?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        })
    }

    /// `n` connections to the VIP; how many each backend answered. Every connection must be
    /// answered by a backend.
    fn tally(&self, n: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let got = self
                .connect_once()
                .unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"));
            let name = String::from_utf8_lossy(&got).trim_end().to_string();
            assert!(
                BACKENDS.iter().any(|(b, _)| *b == name),
                "connection {i} was answered {got:?}, not by a backend; n1 log:\n{}",
                self.t1.log_tail(10)
            );
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    /// `n` connections all answered by `backend`.
    fn assert_all_to(&self, n: usize, backend: &str, what: &str) {
        let counts = self.tally(n);
        assert_eq!(
            counts,
            BTreeMap::from([(backend.to_string(), n)]),
            "{what}: every connection must reach {backend}"
        );
    }

    fn accepted(&self) -> Vec<usize> {
        self.servers.iter().map(Server::accepted).collect()
    }

    /// `n` connections to the VIP get no answer, no backend sees one, and n1's tunnel logs
    /// each as `no_route` with an error containing `why`.
    fn assert_refused(&self, n: usize, why: &str, what: &str) {
        let accepted = self.accepted();
        let failed = || {
            self.t1
                .access_lines(&[("flag", "no_route")])
                .into_iter()
                .filter(|l| l.contains(why))
                .count()
        };
        let before = failed();
        for i in 0..n {
            let got = self
                .topo
                .ns("n1")
                .run(|| {
                    let mut s = connect_from(addr::CLIENT, vip())?;
                    s.set_read_timeout(Some(Duration::from_secs(15)))?;
                    request_then_read_all(&mut s, b"must not arrive\n")
                })
                .unwrap_or_else(|e| panic!("{what}: connection {i}: {e}"));
            assert!(
                got.is_empty(),
                "{what}: connection {i} was answered {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        assert_eventually!(
            failed() == before + n,
            LOG_DEADLINE,
            "{what}: {n} no_route lines naming {why:?} expected on n1:\n{}",
            self.t1.log_tail(10)
        );
        assert_eq!(
            self.accepted(),
            accepted,
            "{what}: no backend saw a connection"
        );
    }
}

/// FAILOVER with [Region, Zone]: every connection goes to the endpoint in the client's zone;
/// when it is not ready or gone, to the one in the client's region; when that is gone too, to
/// the one elsewhere. Readiness restored brings the traffic back.
#[test]
fn failover_prefers_the_clients_zone_then_region_then_anything() {
    let svc = service(Some(LoadBalancer::failover(REGION_ZONE)));
    let be_a = backend(&svc, "be-a", "r1", "a");
    let be_b = backend(&svc, "be-b", "r1", "b");
    let be_c = backend(&svc, "be-c", "r2", "a");
    let mut cfg = mesh(svc, vec![be_a.clone(), be_b, be_c]);
    let Some(lb) = start("lb_failover", &cfg) else {
        return;
    };
    let (a, b) = (uid("be-a"), uid("be-b"));

    lb.assert_all_to(20, "be-a", "same region and zone");

    *cfg.workload_mut("be-a") = be_a.clone().unhealthy();
    lb.push(&cfg, &[&a], &[]);
    lb.assert_all_to(20, "be-b", "zone endpoint not ready: same region");

    *cfg.workload_mut("be-a") = be_a;
    lb.push(&cfg, &[&a], &[]);
    lb.assert_all_to(20, "be-a", "zone endpoint ready again");

    cfg.remove_workload("be-a");
    lb.push(&cfg, &[], &[&a]);
    lb.assert_all_to(20, "be-b", "zone endpoint removed: same region");

    // be-c shares the zone name but not the region: ranks count leading matches only.
    cfg.remove_workload("be-b");
    lb.push(&cfg, &[], &[&b]);
    lb.assert_all_to(20, "be-c", "nothing in the region: any endpoint");
}

/// FAILOVER with [Cluster]: the endpoint in the client's cluster gets every connection, the
/// other cluster's only once it is gone.
#[test]
fn failover_by_cluster_keeps_traffic_in_the_clients_cluster() {
    let svc = service(Some(LoadBalancer::failover(&[LbScope::Cluster])));
    let east = backend(&svc, "be-a", "r1", "a").cluster_id("east");
    let west = backend(&svc, "be-b", "r1", "a").cluster_id("west");
    let mut cfg = mesh(svc, vec![east, west]);
    *cfg.workload_mut("client") = cfg.workload_mut("client").clone().cluster_id("west");
    let Some(lb) = start("lb_cluster", &cfg) else {
        return;
    };

    lb.assert_all_to(20, "be-b", "same cluster");

    cfg.remove_workload("be-b");
    lb.push(&cfg, &[], &[&uid("be-b")]);
    lb.assert_all_to(20, "be-a", "nothing in the client's cluster: the other one");
}

/// STRICT with [Region, Zone]: no endpoint shares both with the client (be-b: other zone;
/// be-c: the zone's name in another region), so the connection is refused — until one does.
#[test]
fn strict_refuses_without_an_endpoint_in_the_clients_zone() {
    let svc = service(Some(LoadBalancer::strict(REGION_ZONE)));
    let be_b = backend(&svc, "be-b", "r1", "b");
    let be_c = backend(&svc, "be-c", "r2", "a");
    let be_a = backend(&svc, "be-a", "r1", "a");
    let mut cfg = mesh(svc, vec![be_b, be_c]);
    let Some(lb) = start("lb_strict", &cfg) else {
        return;
    };

    lb.assert_refused(5, "no endpoint in the client's", "STRICT, none in scope");

    cfg.workloads.push(be_a);
    lb.push(&cfg, &[&uid("be-a")], &[]);
    lb.assert_all_to(20, "be-a", "STRICT, one endpoint in scope");
}

/// No load-balancing policy: endpoints are picked in proportion to their capacity. be-a (3)
/// must get clearly more than be-b (1), be-b some, be-c (0) none. Over 300 connections be-a
/// expects 225 ± 7.5; the bound checked (be-a > 1.5 × be-b, i.e. be-a > 180) is six standard
/// deviations away, while a uniform pick (150 each) would break it nearly always.
#[test]
fn capacity_weights_the_choice_and_zero_is_never_picked() {
    let svc = service(None);
    let be_a = backend(&svc, "be-a", "r1", "a").capacity(3);
    let be_b = backend(&svc, "be-b", "r1", "a").capacity(1);
    let be_c = backend(&svc, "be-c", "r1", "a").capacity(0);
    let cfg = mesh(svc, vec![be_a, be_b, be_c]);
    let Some(lb) = start("lb_capacity", &cfg) else {
        return;
    };

    let counts = lb.tally(300);
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    let (heavy, light, zero) = (count("be-a"), count("be-b"), count("be-c"));
    assert_eq!(zero, 0, "capacity 0 is never picked: {counts:?}");
    assert!(light > 0, "capacity 1 is picked too: {counts:?}");
    assert!(
        2 * heavy > 3 * light,
        "capacity 3 gets clearly more than capacity 1: {counts:?}"
    );
}

/// A not-ready endpoint gets nothing by default; `healthPolicy: AllowAll` admits it; without
/// the policy a service whose only endpoint is not ready refuses connections.
#[test]
fn not_ready_endpoints_are_excluded_unless_the_health_policy_allows_all() {
    let svc = service(None);
    let be_a = backend(&svc, "be-a", "r1", "a").unhealthy();
    let be_b = backend(&svc, "be-b", "r1", "a");
    let mut cfg = mesh(svc, vec![be_a, be_b]);
    let Some(lb) = start("lb_health", &cfg) else {
        return;
    };
    let svc_name = service_resource();

    lb.assert_all_to(20, "be-b", "not-ready be-a excluded by default");

    cfg.services[0] = service(Some(LoadBalancer::standard().allow_all()));
    lb.push(&cfg, &[&svc_name], &[]);
    let counts = lb.tally(40);
    assert!(
        counts.get("be-a").is_some_and(|n| *n > 0) && counts.get("be-b").is_some_and(|n| *n > 0),
        "ALLOW_ALL: the not-ready and the ready endpoint both get connections: {counts:?}"
    );

    cfg.remove_workload("be-b");
    lb.push(&cfg, &[], &[&uid("be-b")]);
    lb.assert_all_to(20, "be-a", "ALLOW_ALL: the not-ready endpoint alone");

    cfg.services[0] = service(None);
    lb.push(&cfg, &[&svc_name], &[]);
    lb.assert_refused(5, "has no healthy endpoint", "only a not-ready endpoint");
}
