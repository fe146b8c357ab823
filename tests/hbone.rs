//! End-to-end tests: two node namespaces joined by a veth link, real iptables capture, two real
//! `nodetunnel` processes (dedicated mode, one per node), real sockets bound to pod addresses.
//!
//! Standard topology (see `nodetunnel_testbed::Topology::two_node`):
//! n1 10.77.1.1 — client 10.77.1.10, client2 10.77.1.11 | n2 10.77.2.1 — server 10.77.2.10,
//! non-mesh `plain` 10.77.2.20; service VIP 10.96.0.10:80 → server:8080.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use nodetunnel_testbed::traffic::{
    bulk_exchange, bulk_handler, echo_handler, echo_roundtrip, request_then_read_all, sha256_hex,
    Pattern,
};
use nodetunnel_testbed::tunnel::{field, field_u64};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    spiffe_id, tunnel_env, Ca, Capture, ControlPlane, Mesh, MeshConfig, Netns, Protocol, Server,
    Topology, Tunnel, Workload,
};

const MIB: u64 = 1 << 20;
const SERVER_PORT: u16 = 8080;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// Another package's binary: `cargo test --workspace` (or `cargo build --workspace`) puts it
/// beside this test's.
fn control_bin() -> PathBuf {
    nodetunnel_testbed::sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

/// The standard topology, or `None` when this machine cannot run namespaced tests.
fn topology(test: &str, capture: Capture) -> Option<Topology> {
    if !namespaces_available(test) {
        return None;
    }
    Some(Topology::two_node(test, capture).expect("building the topology"))
}

/// Writes `cfg` to `<topology dir>/<file>` and returns the path.
fn write_config(topo: &Topology, file: &str, cfg: &MeshConfig) -> PathBuf {
    let path = topo.path(file);
    cfg.write(&path).expect("writing the mesh config");
    path
}

/// A shared CA in `<topology dir>/ca`.
fn make_ca(topo: &Topology) -> PathBuf {
    let dir = topo.path("ca");
    std::fs::create_dir_all(&dir).expect("creating the CA dir");
    generate_ca(bin(), &dir).expect("nodetunnel generate-ca");
    dir
}

fn start_tunnel(topo: &Topology, node: &str, mesh: Mesh<'_>, ca: Ca<'_>) -> Tunnel {
    let env = tunnel_env(node, mesh, ca);
    topo.start_tunnel(node, bin(), &env_refs(&env))
        .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
}

/// `nodetunnel-control` on n1 serving `cfg` (written to mesh.yaml) with a new shared CA, which
/// it returns too (for tunnels that load the CA files themselves).
fn control_plane(topo: &Topology, cfg: &MeshConfig) -> (ControlPlane, PathBuf) {
    let mesh = write_config(topo, "mesh.yaml", cfg);
    let ca = make_ca(topo);
    let cp = topo
        .start_control_plane("n1", &control_bin(), &mesh, &ca, &[])
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    (cp, ca)
}

/// A tunnel configured entirely by the control plane (xDS + CA), as in a real cluster.
fn start_controlled(topo: &Topology, node: &str, cp: &ControlPlane) -> Tunnel {
    start_tunnel(topo, node, Mesh::Control(cp), Ca::Control(cp))
}

/// The control plane and both tunnels of the standard mesh.
fn standard_mesh(topo: &Topology) -> (ControlPlane, Tunnel, Tunnel) {
    let (cp, _) = control_plane(topo, &MeshConfig::standard(SERVER_PORT));
    let t2 = start_controlled(topo, "n2", &cp);
    let t1 = start_controlled(topo, "n1", &cp);
    (cp, t1, t2)
}

fn connect(ns: &Netns, src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    ns.run(move || connect_from(src, dst))
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"))
}

/// HBONE connections accepted on `ns` (local port 15008, established).
fn hbone_conns(ns: &Netns) -> usize {
    ns.established_on_local_port(port::HBONE).expect("ss")
}

/// Opens `n` connections from `src` to `dst` at once (threads released by a barrier), echoes
/// 16 KiB of a per-connection pattern on each, and returns them all still open.
fn open_concurrently(ns: &Netns, src: Ipv4Addr, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            ns.spawn(move || -> io::Result<TcpStream> {
                barrier.wait();
                let mut s = connect_from(src, dst)?;
                echo_roundtrip(&mut s, &Pattern::new(1000 + i as u64).bytes(16 * 1024))?;
                Ok(s)
            })
        })
        .collect();
    handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.join()
                .expect("client thread panicked")
                .unwrap_or_else(|e| panic!("connection {i} of {n} to {dst}: {e}"))
        })
        .collect()
}

/// Asserts a connection to the mesh server is refused: the client gets no data and is closed,
/// and the server application never accepts anything.
fn assert_refused(topo: &Topology, server: &Server, why: &str) {
    let before = server.accepted();
    let mut s = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let got = request_then_read_all(&mut s, b"must not arrive\n")
        .unwrap_or_else(|e| panic!("{why}: {e}"));
    assert!(
        got.is_empty(),
        "{why}: client received {} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got)
    );
    // Give a (wrongly) forwarded connection time to show up before concluding it did not.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.accepted(),
        before,
        "{why}: the server application saw a connection"
    );
}

// ----------------------------------------------------------------------------------- tests

/// 100 MiB each way, concurrently, byte-exact, through n1's outbound capture → HBONE → n2.
#[test]
fn hbone_carries_100_mib_each_way_byte_exact() {
    let Some(topo) = topology("hbone_100mib", Capture::ALL) else {
        return;
    };
    let (_cp, t1, t2) = standard_mesh(&topo);
    let server = Server::start(topo.ns("n2"), server_addr(), bulk_handler).unwrap();
    assert_eq!(
        hbone_conns(topo.ns("n2")),
        0,
        "no HBONE connection before traffic"
    );

    let mut stream = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    let client = stream.local_addr().unwrap();
    let transfer = thread::spawn(move || bulk_exchange(&mut stream, 0x5eed, 100 * MIB, 100 * MIB));
    // While the transfer runs, n2 holds exactly one mTLS connection on :15008.
    assert_eventually!(
        hbone_conns(topo.ns("n2")) == 1,
        Duration::from_secs(10),
        "no :15008 connection on n2 during the transfer"
    );
    let report = transfer.join().unwrap().expect("bulk transfer");
    assert!(report.is_exact(), "not byte-exact: {report:?}");
    assert_eq!(server.accepted(), 1);
    assert!(server.errors().is_empty(), "{:?}", server.errors());

    // Both access logs record the connection as HBONE with the right identities and sizes.
    let dst = server_addr().to_string();
    let out = t1.wait_access_line(
        &[("dst.addr", &dst), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    assert_eq!(
        field(&out, "src.addr"),
        Some(client.to_string().as_str()),
        "{out}"
    );
    assert_eq!(
        field(&out, "dst.identity"),
        Some(spiffe_id("default", "server").as_str()),
        "{out}"
    );
    let inb = t2.wait_access_line(
        &[("dst.addr", &dst), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    eprintln!("n1 access log: {out}\nn2 access log: {inb}");
    assert_eq!(
        field(&inb, "src.identity"),
        Some(spiffe_id("default", "client").as_str()),
        "{inb}"
    );
    // ztunnel's field names, read by tools written for ztunnel's log.
    for (line, direction) in [(&out, "outbound"), (&inb, "inbound")] {
        assert_eq!(field(line, "direction"), Some(direction), "{line}");
        assert_eq!(field(line, "dst.hbone_addr"), Some(dst.as_str()), "{line}");
        assert_eq!(field(line, "src.namespace"), Some("default"), "{line}");
        assert_eq!(field(line, "dst.namespace"), Some("default"), "{line}");
        assert!(
            field(line, "duration").is_some_and(|d| d.ends_with("ms")),
            "{line}"
        );
    }
    for line in [&out, &inb] {
        for key in ["bytes_sent", "bytes_recv"] {
            let n = field_u64(line, key).unwrap_or_else(|| panic!("no numeric {key} in {line}"));
            assert!(n >= 100 * MIB, "{key}={n} < 100 MiB in {line}");
        }
    }
}

/// 50 connections held open at once from one client identity ride one TLS connection; a second
/// identity gets its own.
#[test]
fn fifty_connections_from_one_identity_share_one_hbone_connection() {
    let Some(topo) = topology("hbone_pool", Capture::ALL) else {
        return;
    };
    let (_cp, _t1, _t2) = standard_mesh(&topo);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();

    let streams = open_concurrently(topo.ns("n1"), addr::CLIENT, server_addr(), 50);
    assert_eventually!(server.accepted() == 50);
    let conns = topo
        .ns("n2")
        .established(&format!("( sport = :{} )", port::HBONE))
        .unwrap();
    assert_eq!(
        conns.len(),
        1,
        "50 streams from one identity must share one HBONE connection; n2 has:\n{}",
        conns.join("\n")
    );

    // A different source identity must not share it.
    let mut other = connect(topo.ns("n1"), addr::CLIENT2, server_addr());
    echo_roundtrip(&mut other, b"client2 says hi").unwrap();
    assert_eventually!(
        hbone_conns(topo.ns("n2")) == 2,
        Duration::from_secs(5),
        "client2 should get its own HBONE connection"
    );
    drop(streams);
}

/// 50 concurrent connections to the service VIP reach the endpoint on its target port (80 →
/// 8080; nothing listens on 80) over one HBONE connection. n1's access log names both the VIP
/// the client dialed and the endpoint the tunnel chose.
#[test]
fn fifty_connections_through_service_vip() {
    let Some(topo) = topology("hbone_vip", Capture::ALL) else {
        return;
    };
    let (_cp, t1, _t2) = standard_mesh(&topo);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();

    let vip: SocketAddr = (addr::SERVICE_VIP, 80).into();
    let streams = open_concurrently(topo.ns("n1"), addr::CLIENT, vip, 50);
    assert_eventually!(server.accepted() == 50);
    assert_eq!(
        hbone_conns(topo.ns("n2")),
        1,
        "VIP traffic must ride one HBONE connection"
    );
    drop(streams);
    let vip_s = vip.to_string();
    let line = t1.wait_access_line(
        &[("original_dst", &vip_s), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    assert_eq!(
        field(&line, "dst.addr"),
        Some(server_addr().to_string().as_str()),
        "{line}"
    );
}

/// A destination that is not in the config is passed through as plain TCP: data round-trips,
/// the tunnel logs it as TCP, and no :15008 connection exists anywhere.
#[test]
fn passthrough_to_unknown_destination() {
    let Some(topo) = topology("passthrough_unknown", Capture::ALL) else {
        return;
    };
    let (_cp, t1, _t2) = standard_mesh(&topo);
    passthrough_roundtrip(&topo, &t1);
}

/// A destination workload with `protocol: TCP` is passed through as plain TCP.
#[test]
fn passthrough_to_tcp_protocol_workload() {
    let Some(topo) = topology("passthrough_tcp", Capture::ALL) else {
        return;
    };
    let cfg = MeshConfig::standard(SERVER_PORT)
        .with_workload(Workload::new("legacy", addr::NON_MESH, "n2").protocol(Protocol::Tcp));
    let (cp, _) = control_plane(&topo, &cfg);
    let _t2 = start_controlled(&topo, "n2", &cp);
    let t1 = start_controlled(&topo, "n1", &cp);
    passthrough_roundtrip(&topo, &t1);
}

fn passthrough_roundtrip(topo: &Topology, t1: &Tunnel) {
    let dst: SocketAddr = (addr::NON_MESH, 9090).into();
    let server = Server::start(topo.ns("n2"), dst, echo_handler).unwrap();
    let mut s = connect(topo.ns("n1"), addr::CLIENT, dst);
    let client = s.local_addr().unwrap();
    echo_roundtrip(&mut s, &Pattern::new(9).bytes(MIB as usize)).expect("passthrough echo");
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        hbone_conns(topo.ns("n2")),
        0,
        "passthrough must not use HBONE"
    );
    assert!(
        topo.ns("n1")
            .established("( dport = :15008 )")
            .unwrap()
            .is_empty(),
        "n1 dialed :15008 for a passthrough"
    );
    drop(s);
    // The tunnel did handle it (capture works; this is not a bypass).
    let dst_s = dst.to_string();
    let line = t1.wait_access_line(
        &[("dst.addr", &dst_s), ("protocol", "TCP")],
        Duration::from_secs(10),
    );
    assert_eq!(
        field(&line, "src.addr"),
        Some(client.to_string().as_str()),
        "{line}"
    );
}

/// A peer whose certificate chains to another root is refused; the same setup with the shared
/// CA works first (so the refusal is about trust, not a broken setup).
#[test]
fn peer_from_untrusted_ca_is_refused() {
    let Some(topo) = topology("untrusted_ca", Capture::ALL) else {
        return;
    };
    let (cp, _) = control_plane(&topo, &MeshConfig::standard(SERVER_PORT));
    let _t2 = start_controlled(&topo, "n2", &cp);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();

    let t1 = start_controlled(&topo, "n1", &cp);
    let mut s = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"control: same CA works")
        .expect("control connection with the shared CA");
    drop(s);
    assert_eq!(server.accepted(), 1);
    t1.stop();

    let _t1 = start_tunnel(&topo, "n1", Mesh::Control(&cp), Ca::Fake);
    assert_refused(&topo, &server, "n1 on the FAKE_CA test root");
    assert_eq!(
        hbone_conns(topo.ns("n2")),
        0,
        "no HBONE connection may be established"
    );
}

/// `FAKE_CA=true` on both tunnels (as ztunnel test setups run): each signs with the same
/// built-in test root, so they trust each other and traffic crosses HBONE; each says loudly
/// that the root is for tests only.
#[test]
fn two_fake_ca_tunnels_trust_each_other() {
    let Some(topo) = topology("fake_ca_pair", Capture::ALL) else {
        return;
    };
    let mesh = write_config(&topo, "mesh.yaml", &MeshConfig::standard(SERVER_PORT));
    let t2 = start_tunnel(&topo, "n2", Mesh::File(&mesh), Ca::Fake);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let t1 = start_tunnel(&topo, "n1", Mesh::File(&mesh), Ca::Fake);
    let mut s = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"two FAKE_CA tunnels").expect("echo across two FAKE_CA tunnels");
    drop(s);
    assert_eq!(server.accepted(), 1);
    assert_eq!(hbone_conns(topo.ns("n2")), 1, "the echo must cross HBONE");
    for t in [&t1, &t2] {
        assert!(
            t.log().contains("built-in TEST root"),
            "no FAKE_CA warning:\n{}",
            t.log_tail(20)
        );
    }
}

/// n2 presents `spiffe://cluster.local/ns/default/sa/impostor` for the server pod (its config
/// says so), while n1 expects `.../sa/server`: n1 must refuse. The honest n2 works first.
#[test]
fn peer_with_wrong_identity_is_refused() {
    let Some(topo) = topology("wrong_identity", Capture::ALL) else {
        return;
    };
    let (cp, ca) = control_plane(&topo, &MeshConfig::standard(SERVER_PORT));
    let mut impostor = MeshConfig::standard(SERVER_PORT);
    impostor.workload_mut("server").service_account = "impostor".into();
    let impostor_cfg = write_config(&topo, "impostor.yaml", &impostor);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let _t1 = start_controlled(&topo, "n1", &cp);

    let t2 = start_controlled(&topo, "n2", &cp);
    let mut s = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"control: honest peer works")
        .expect("control connection to the honest n2");
    drop(s);
    assert_eq!(server.accepted(), 1);
    t2.stop();

    // The control plane would not sign sa/impostor (no such workload in its mesh), so this
    // tunnel reads its own config and loads the mesh CA files itself: a peer with a valid
    // certificate from the right root, for the wrong identity.
    let _t2 = start_tunnel(&topo, "n2", Mesh::File(&impostor_cfg), Ca::Dir(&ca));
    assert_refused(&topo, &server, "n2 presenting sa/impostor for the server");
}

/// The client half-closes after its request; the server reads to EOF and only then answers
/// (a hash of the request plus 1 MiB) and closes; the client gets the whole answer. Over HBONE.
#[test]
fn half_close_is_carried_over_hbone() {
    let Some(topo) = topology("half_close", Capture::ALL) else {
        return;
    };
    let (_cp, _t1, t2) = standard_mesh(&topo);
    let reply_len = MIB;
    let server = Server::start(topo.ns("n2"), server_addr(), move |mut s: TcpStream| {
        let mut request = Vec::new();
        s.read_to_end(&mut request)?; // returns only once the client's FIN crossed the tunnel
        writeln!(s, "{} {}", request.len(), sha256_hex(&request))?;
        Pattern::new(77).write_to(&mut s, reply_len)?;
        s.shutdown(Shutdown::Write)
    })
    .unwrap();

    let request = Pattern::new(5).bytes(MIB as usize + 17);
    let mut s = connect(topo.ns("n1"), addr::CLIENT, server_addr());
    s.write_all(&request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .expect("reading the reply after our half-close");

    let header = format!("{} {}\n", request.len(), sha256_hex(&request));
    assert!(
        reply.starts_with(header.as_bytes()),
        "server saw a different request: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(100)])
    );
    let body = &reply[header.len()..];
    assert_eq!(body.len() as u64, reply_len, "reply truncated");
    assert_eq!(
        Pattern::new(77)
            .verify_from(&mut &body[..], reply_len)
            .unwrap(),
        None,
        "reply corrupted"
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());

    let dst = server_addr().to_string();
    t2.wait_access_line(
        &[("dst.addr", &dst), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
}

/// A client outside the mesh (n1 has no tunnel and no capture; source 10.77.1.11 is not in
/// n2's config) reaches the mesh server through n2's inbound plaintext capture (:15006).
#[test]
fn inbound_plaintext_from_non_mesh_client() {
    let Some(topo) = topology("inbound_plaintext", Capture::ALL) else {
        return;
    };
    topo.node("n1").set_capture(Capture::NONE).unwrap();
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.workloads.retain(|w| w.name != "client2");
    let (cp, _) = control_plane(&topo, &cfg);
    let t2 = start_controlled(&topo, "n2", &cp);
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();

    let mut s = connect(topo.ns("n1"), addr::CLIENT2, server_addr());
    let client = s.local_addr().unwrap();
    echo_roundtrip(&mut s, &Pattern::new(6).bytes(256 * 1024)).expect("echo through :15006");
    let captured = topo
        .ns("n2")
        .established(&format!("( sport = :{} )", port::INBOUND_PLAINTEXT))
        .unwrap();
    assert_eq!(
        captured.len(),
        1,
        "expected the client's connection on n2:15006, got:\n{}",
        captured.join("\n")
    );
    assert_eq!(server.accepted(), 1);
    assert_eq!(hbone_conns(topo.ns("n2")), 0);
    drop(s);

    let dst = server_addr().to_string();
    let src = client.to_string();
    let line = t2.wait_access_line(
        &[("dst.addr", &dst), ("src.addr", &src)],
        Duration::from_secs(10),
    );
    assert_eq!(field(&line, "protocol"), Some("TCP"), "{line}");
}
