//! Self-test of the in-pod test bed (no daemon needed): pods in their own namespaces route to
//! each other on one node and across nodes, the in-pod rules are idempotent and redirect as
//! the tunnel expects (including the connmark/table-100 path of transparent inbound delivery),
//! pods come and go, and nothing is left after drop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nodetunnel_testbed::inpod::rules::{PROBE_SOURCE, TUNNEL_SOCKET_MARK};
use nodetunnel_testbed::traffic::{bulk_exchange, bulk_handler, echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, apply_inpod_rules, assert_eventually, connect_from, env_refs, inpod_rules_v4,
    namespaces_available, remove_inpod_rules, shared_tunnel_env, Ca, InpodRules, Mesh, Netns,
    PodTopology, Server,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn all_names(topo: &PodTopology) -> Vec<String> {
    let nodes = topo.nodes().iter().map(|n| n.ns().name().to_string());
    let pods = topo.pods().iter().map(|p| p.ns().name().to_string());
    nodes.chain(pods).collect()
}

/// `-A` lines of `iptables-save` in `ns`, per table.
fn saved_rules(ns: &Netns) -> Vec<String> {
    let save = ns.exec("iptables-save", &[]).unwrap();
    let mut table = String::new();
    let mut rules = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if line.starts_with("-A ") {
            rules.push(format!("{table} {line}"));
        }
    }
    rules
}

/// Byte-exact bulk transfer from `src` (inside `from`) to a fresh server at `dst` in `to`;
/// returns the peer address the server saw.
fn bulk(from: &Netns, src: Ipv4Addr, to: &Netns, dst: SocketAddr) -> SocketAddr {
    let server = Server::start(to, dst, bulk_handler).unwrap();
    let mut s = from.run(move || connect_from(src, dst)).unwrap();
    let report = bulk_exchange(&mut s, 9, 1 << 20, 1 << 20).unwrap();
    assert!(report.is_exact(), "{src} → {dst}: {report:?}");
    assert_eq!(server.accepted(), 1);
    server.peers()[0]
}

/// The tunnel's inbound delivery: a socket with SO_MARK 0x539 and IP_TRANSPARENT, bound to the
/// (remote) client's address, connecting to the app inside the pod.
fn transparent_connect(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    let fd: OwnedFd = sock::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sock::setsockopt(&fd, sockopt::Mark, &TUNNEL_SOCKET_MARK)?;
    sock::setsockopt(&fd, sockopt::IpTransparent, &true)?;
    // Give up on the handshake after ~1 s (the negative case below must not take minutes).
    sock::setsockopt(&fd, sockopt::TcpUserTimeout, &1000)?;
    sock::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    sock::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

#[test]
fn pods_route_same_node_and_cross_node_without_rules() {
    if !namespaces_available("pods_route_same_node_and_cross_node_without_rules") {
        return;
    }
    let topo = PodTopology::two_node("inpod_routing", InpodRules::Skip).unwrap();
    let names = all_names(&topo);
    assert_eq!(names.len(), 6, "{names:?}");
    for n in &names {
        assert!(n.starts_with(&format!("ntt{}-", std::process::id())), "{n}");
        assert!(netns_exists(n), "{n} missing");
    }
    // Nothing installed anywhere.
    for pod in topo.pods() {
        assert!(saved_rules(pod.ns()).is_empty(), "{}", pod.name());
    }
    let (client, client2, server) = (topo.ns("client"), topo.ns("client2"), topo.ns("server"));
    // Same node: client → client2 over n1.
    let peer = bulk(client, addr::CLIENT, client2, (addr::CLIENT2, 7000).into());
    assert_eq!(peer.ip(), addr::CLIENT);
    // Cross node, both directions, and to the non-mesh pod: no NAT anywhere.
    let peer = bulk(client, addr::CLIENT, server, (addr::SERVER, 7001).into());
    assert_eq!(peer.ip(), addr::CLIENT);
    let peer = bulk(server, addr::SERVER, client2, (addr::CLIENT2, 7002).into());
    assert_eq!(peer.ip(), addr::SERVER);
    let peer = bulk(
        client2,
        addr::CLIENT2,
        topo.ns("plain"),
        (addr::NON_MESH, 7003).into(),
    );
    assert_eq!(peer.ip(), addr::CLIENT2);
    // The node reaches its pods and the other node's pods; pods reach both nodes.
    let peer = bulk(
        topo.node_ns("n2"),
        addr::NODE2,
        client,
        (addr::CLIENT, 7004).into(),
    );
    assert_eq!(peer.ip(), addr::NODE2);
    let peer = bulk(
        server,
        addr::SERVER,
        topo.node_ns("n1"),
        (addr::NODE1, 7005).into(),
    );
    assert_eq!(peer.ip(), addr::SERVER);

    // Each pod sees only lo and its eth0; each node lo, eth0 and one veth per pod.
    let links = client.ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
    let links = topo.node_ns("n1").ip(&["-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 4, "{links}");
    assert_eq!(topo.pod("client").node(), "n1");
    assert!(topo.pod("server").mesh() && !topo.pod("plain").mesh());
    assert_eq!(topo.pods_on("n2").count(), 2);

    drop(topo);
    for n in &names {
        assert!(!netns_exists(n), "{n} left behind");
    }
}

#[test]
fn inpod_rules_are_idempotent_and_redirect_like_the_contract() {
    if !namespaces_available("inpod_rules_are_idempotent_and_redirect_like_the_contract") {
        return;
    }
    let topo = PodTopology::two_node("inpod_rules", InpodRules::Apply).unwrap();
    let client = topo.ns("client");
    // Applied once at build; twice more changes nothing.
    let once = saved_rules(client);
    // As many rules as the CNI agent's rule set has, i.e. exactly that set.
    let expected = inpod_rules_v4()
        .lines()
        .filter(|l| l.starts_with("-A "))
        .count();
    assert_eq!(once.len(), expected, "{once:#?}");
    apply_inpod_rules(client).unwrap();
    apply_inpod_rules(client).unwrap();
    assert_eq!(saved_rules(client), once);
    let count = |needle: &str| once.iter().filter(|r| r.contains(needle)).count();
    for needle in [
        "mangle -A PREROUTING -j ISTIO_PRERT",
        "mangle -A OUTPUT -j ISTIO_OUTPUT",
        "nat -A PREROUTING -j ISTIO_PRERT",
        "nat -A OUTPUT -j ISTIO_OUTPUT",
        "--to-ports 15001",
        "--to-ports 15006",
        "CONNMARK --set-xmark 0x111/0xfff",
        "CONNMARK --restore-mark",
    ] {
        assert_eq!(count(needle), 1, "{needle} in {once:#?}");
    }
    assert_eq!(count(&PROBE_SOURCE.to_string()), 2, "{once:#?}");
    let ip_rules = client.ip(&["rule", "show"]).unwrap();
    assert_eq!(
        ip_rules.matches("fwmark 0x111/0xfff lookup 100").count(),
        1,
        "{ip_rules}"
    );
    let table = client.ip(&["route", "show", "table", "100"]).unwrap();
    assert!(table.contains("local default dev lo"), "{table}");
    // Non-mesh pods and nodes carry no rules.
    assert!(saved_rules(topo.ns("plain")).is_empty());
    assert!(saved_rules(topo.node_ns("n1")).is_empty());

    // Outbound: a connect from the mesh pod to another pod lands on the pod's own :15001.
    let outbound =
        Server::start(client, (Ipv4Addr::UNSPECIFIED, 15001).into(), echo_handler).unwrap();
    let mut s = client
        .run(|| connect_from(addr::CLIENT, (addr::SERVER, 8080).into()))
        .unwrap();
    echo_roundtrip(&mut s, b"captured in the pod").unwrap();
    assert_eq!(outbound.accepted(), 1);

    // Inbound: plaintext from a pod without rules to the mesh pod lands on its :15006 ...
    let server = topo.ns("server");
    let inbound =
        Server::start(server, (Ipv4Addr::UNSPECIFIED, 15006).into(), echo_handler).unwrap();
    let mut s = topo
        .ns("plain")
        .run(|| connect_from(addr::NON_MESH, (addr::SERVER, 8080).into()))
        .unwrap();
    echo_roundtrip(&mut s, b"inbound").unwrap();
    assert_eq!(inbound.accepted(), 1);
    assert_eq!(inbound.peers()[0].ip(), addr::NON_MESH);
    // ... while :15008 is not redirected (nobody listens → refused).
    let refused = topo
        .ns("plain")
        .run(|| connect_from(addr::NON_MESH, (addr::SERVER, 15008).into()));
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // Transparent delivery: marked + IP_TRANSPARENT from the remote client's address reaches
    // the app, and the app's replies come back through connmark 0x111 → table 100 → lo.
    let app = Server::start(server, (addr::SERVER, 8080).into(), echo_handler).unwrap();
    let mut s = server
        .run(|| transparent_connect(addr::CLIENT, SocketAddrV4::new(addr::SERVER, 8080)))
        .unwrap();
    echo_roundtrip(&mut s, b"as if from the client").unwrap();
    assert_eq!(app.peers()[0].ip(), addr::CLIENT);
    assert_eq!(
        inbound.accepted(),
        1,
        "the tunnel's own socket was redirected"
    );

    // Removal takes everything away; the pod routes plainly again.
    remove_inpod_rules(client).unwrap();
    remove_inpod_rules(client).unwrap();
    assert!(saved_rules(client).is_empty(), "{:#?}", saved_rules(client));
    assert!(!client.ip(&["rule", "show"]).unwrap().contains("lookup 100"));
    let peer = bulk(
        client,
        addr::CLIENT,
        topo.ns("plain"),
        (addr::NON_MESH, 7010).into(),
    );
    assert_eq!(peer.ip(), addr::CLIENT);
    assert_eq!(outbound.accepted(), 1);
}

#[test]
fn pods_are_added_and_removed_at_runtime() {
    if !namespaces_available("pods_are_added_and_removed_at_runtime") {
        return;
    }
    let mut topo = PodTopology::two_node("inpod_dynamic", InpodRules::Apply).unwrap();
    let extra = Ipv4Addr::new(10, 77, 2, 30);
    let (name, veth) = {
        let pod = topo.add_pod("n2", "late", extra, false).unwrap();
        assert_eq!((pod.node(), pod.ip(), pod.mesh()), ("n2", extra, false));
        (pod.ns().name().to_string(), pod.veth().to_string())
    };
    assert!(netns_exists(&name));
    let peer = bulk(
        topo.ns("late"),
        extra,
        topo.ns("plain"),
        (addr::NON_MESH, 7020).into(),
    );
    assert_eq!(peer.ip(), extra);
    // Added mesh pods get the rules.
    topo.add_pod("n1", "late-mesh", Ipv4Addr::new(10, 77, 1, 12), true)
        .unwrap();
    assert!(!saved_rules(topo.ns("late-mesh")).is_empty());
    // Bad requests are refused without side effects.
    assert!(topo
        .add_pod("n1", "late", Ipv4Addr::new(10, 77, 1, 13), true)
        .is_err());
    assert!(topo
        .add_pod("n1", "wrong-range", Ipv4Addr::new(10, 77, 2, 40), true)
        .is_err());
    assert!(topo
        .add_pod("n9", "no-node", Ipv4Addr::new(10, 77, 9, 2), true)
        .is_err());

    topo.remove_pod("late").unwrap();
    assert!(!netns_exists(&name), "{name} still exists");
    let links = topo.node_ns("n2").ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(&format!("{veth}@")), "{links}");
    let routes = topo.node_ns("n2").ip(&["route"]).unwrap();
    assert!(!routes.contains(&extra.to_string()), "{routes}");
    assert!(topo.remove_pod("late").is_err());
    // The address can be reused by a new pod.
    topo.add_pod("n2", "again", extra, true).unwrap();
    let peer = bulk(
        topo.ns("plain"),
        addr::NON_MESH,
        topo.node_ns("n1"),
        (addr::NODE1, 7021).into(),
    );
    assert_eq!(peer.ip(), addr::NON_MESH);

    let names = all_names(&topo);
    drop(topo);
    for n in &names {
        assert!(!netns_exists(n), "{n} left behind");
    }
}

#[test]
fn shared_mode_tunnel_is_spawned_without_waiting_and_measured() {
    if !namespaces_available("shared_mode_tunnel_is_spawned_without_waiting_and_measured") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let topo = PodTopology::builder("inpod_spawn")
        .node("n1", addr::NODE1)
        .pod("n1", "client", addr::CLIENT)
        .build()
        .unwrap();
    // A stand-in daemon that never becomes ready: prints its mode, then sleeps.
    let bin = topo.path("fake-tunnel.sh");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho \"mode=$PROXY_MODE uds=$INPOD_UDS node=$NODE_NAME\"\nexec sleep 300\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uds = topo.path("zds.sock");
    let env = shared_tunnel_env(
        "n1",
        Mesh::File(&topo.path("mesh.yaml")),
        Ca::Dir(&topo.path("ca")),
        &uds,
    );
    let mut t = topo.spawn_tunnel("n1", &bin, &env_refs(&env)).unwrap();
    let want = format!("mode=shared uds={} node=n1", uds.display());
    assert_eventually!(
        t.log().contains(&want),
        Duration::from_secs(5),
        "log: {}",
        t.log()
    );
    assert!(!t.is_ready());
    let err = t.wait_ready(Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("not ready after"), "{err}");
    let stats = t.stats().unwrap();
    assert!(stats.fds >= 3 && stats.threads == 1, "{stats:?}");
    assert!(
        stats.rss_kib > 0 && stats.hwm_kib >= stats.rss_kib,
        "{stats:?}"
    );
    let pid = t.pid();
    assert!(t.stop().is_some());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
