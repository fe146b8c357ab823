//! Self-test of the test bed (no daemon needed): topologies come up, traffic crosses the link,
//! capture rules are installed, and everything is gone after drop — also after a panic.

use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use nodetunnel_testbed::traffic::{
    bulk_exchange, bulk_handler, echo_handler, echo_roundtrip, Pattern,
};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, namespaces_available, Capture, Server, Topology,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn names(topo: &Topology) -> Vec<String> {
    topo.nodes()
        .iter()
        .map(|n| n.ns().name().to_string())
        .collect()
}

#[test]
fn two_node_topology_carries_tcp_and_cleans_up() {
    if !namespaces_available("two_node_topology_carries_tcp_and_cleans_up") {
        return;
    }
    let topo = Topology::two_node("selftest", Capture::NONE).unwrap();
    let ns_names = names(&topo);
    assert_eq!(ns_names.len(), 2);
    for n in &ns_names {
        assert!(n.starts_with(&format!("ntt{}-", std::process::id())), "{n}");
        assert!(netns_exists(n), "{n} missing");
    }
    // TCP byte-exact both ways, and the server sees the pod address (no NAT without capture).
    let dst: SocketAddr = (addr::SERVER, 7000).into();
    let server = Server::start(topo.ns("n2"), dst, bulk_handler).unwrap();
    let mut s = topo
        .ns("n1")
        .run(move || connect_from(addr::CLIENT, dst))
        .unwrap();
    assert_eq!(topo.ns("n2").established_on_local_port(7000).unwrap(), 1);
    let report = bulk_exchange(&mut s, 42, 3 << 20, 2 << 20).unwrap();
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.peers()[0].ip(), addr::CLIENT);
    // It really crossed the veth link: n1 learned the server's MAC over ARP.
    let neigh = topo.ns("n1").ip(&["neigh", "show", "dev", "eth0"]).unwrap();
    assert!(neigh.contains("10.77.2.10"), "{neigh}");
    drop(s);
    assert_eventually!(topo
        .ns("n1")
        .established("( dport = :7000 )")
        .unwrap()
        .is_empty());

    // The node namespace must not see the host's interfaces: only lo and eth0.
    let links = topo.ns("n1").ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
    drop(server);
    drop(topo);
    for n in &ns_names {
        assert!(!netns_exists(n), "{n} left behind");
    }
}

#[test]
fn capture_rules_redirect_outbound_and_inbound() {
    if !namespaces_available("capture_rules_redirect_outbound_and_inbound") {
        return;
    }
    let topo = Topology::two_node("selftest_capture", Capture::ALL).unwrap();
    let rules_n2 = topo
        .ns("n2")
        .exec("iptables", &["-t", "nat", "-S"])
        .unwrap();
    assert!(
        rules_n2.contains("-A OUTPUT -p tcp -m mark ! --mark 0x539/0xfff")
            || rules_n2.contains("! -d 127.0.0.0/8"),
        "{rules_n2}"
    );
    assert!(
        rules_n2.contains(
            "-d 10.77.2.10/32 -p tcp -m tcp ! --dport 15008 -j REDIRECT --to-ports 15006"
        ),
        "{rules_n2}"
    );
    assert!(
        !rules_n2.contains("10.77.2.20"),
        "non-mesh pod must not be captured: {rules_n2}"
    );

    // A stand-in "tunnel" on n1:15001 receives the client's connection to the server IP.
    let fake_outbound = Server::start(
        topo.ns("n1"),
        (std::net::Ipv4Addr::UNSPECIFIED, 15001).into(),
        echo_handler,
    )
    .unwrap();
    let mut s = topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT, (addr::SERVER, 8080).into()))
        .unwrap();
    echo_roundtrip(&mut s, b"captured").unwrap();
    assert_eq!(fake_outbound.accepted(), 1);

    // A stand-in on n2:15006 receives plaintext to the mesh pod from a client without capture.
    topo.node("n1").set_capture(Capture::NONE).unwrap();
    let fake_inbound = Server::start(
        topo.ns("n2"),
        (std::net::Ipv4Addr::UNSPECIFIED, 15006).into(),
        echo_handler,
    )
    .unwrap();
    let mut s = topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT2, (addr::SERVER, 8080).into()))
        .unwrap();
    echo_roundtrip(&mut s, b"inbound").unwrap();
    assert_eq!(fake_inbound.accepted(), 1);
    // ... while :15008 passes uncaptured (nobody listens there → refused).
    let refused = topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT2, (addr::SERVER, 15008).into()));
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // ... and the service CIDR is routable (captured on n1 when capture is on).
    topo.node("n1").set_capture(Capture::ALL).unwrap();
    let mut s = topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT, (addr::SERVICE_VIP, 80).into()))
        .unwrap();
    echo_roundtrip(&mut s, &Pattern::new(1).bytes(100_000)).unwrap();
    assert_eq!(fake_outbound.accepted(), 2);
}

#[test]
fn namespaces_are_removed_when_a_test_closure_panics() {
    if !namespaces_available("namespaces_are_removed_when_a_test_closure_panics") {
        return;
    }
    let mut seen = Vec::new();
    let mut sleeper = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::two_node("selftest_panic", Capture::ALL).unwrap();
        seen = names(&topo);
        let _server =
            Server::start(topo.ns("n2"), (addr::SERVER, 7001).into(), echo_handler).unwrap();
        // A background process inside the namespace must be killed too.
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", topo.ns("n2").name(), "sleep", "300"])
            .spawn()
            .unwrap();
        sleeper = Some(child);
        topo.ns("n1").run(|| panic!("boom inside the namespace"));
    }));
    assert!(result.is_err(), "the closure's panic must propagate");
    assert_eq!(seen.len(), 2);
    for n in &seen {
        assert!(!netns_exists(n), "{n} left behind after panic");
    }
    let mut sleeper = sleeper.expect("the sleeper was started");
    assert_eventually!(
        sleeper.try_wait().unwrap().is_some(),
        Duration::from_secs(5),
        "process {} inside the namespace survived",
        sleeper.id()
    );
}

#[test]
fn stale_namespaces_of_dead_pids_are_swept_and_others_untouched() {
    if !namespaces_available("stale_namespaces_of_dead_pids_are_swept_and_others_untouched") {
        return;
    }
    // pid_max is at most 4194304 on Linux: this owner cannot exist.
    let stale = "ntt4194305-0-n1";
    nodetunnel_testbed::cmd::run("ip", &["netns", "add", stale]).unwrap();
    nodetunnel_testbed::netns::sweep_stale_now();
    assert!(!netns_exists(stale), "stale namespace not swept");
}
