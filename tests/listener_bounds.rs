//! Resource bounds of the inbound HBONE listener (15008) in real network namespaces, with real
//! tunnels (dedicated mode, standard two-node topology; see `tests/hbone.rs`): the per-source
//! connection cap and its log line, TCP keepalive on the tunnel's HBONE sockets, and 10,000
//! silent clients reaped by the handshake deadline while real HBONE traffic keeps flowing.
//!
//! The "attacking" sockets are opened by the test from n1's node address with the tunnel's
//! mark, so n1's capture rules let them go straight to n2's 15008 (as a peer tunnel's would).
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nodetunnel_testbed::procstat::fd_count;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    tunnel_env, Ca, Capture, Mesh, MeshConfig, Netns, Server, Topology, Tunnel,
};
use socket2::{Domain, Protocol, Socket, Type};

const SERVER_PORT: u16 = 8080;
const TUNNEL_MARK: u32 = 0x539;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

fn hbone_addr() -> SocketAddr {
    (addr::SERVER, port::HBONE).into()
}

fn topology(test: &str) -> Option<(Topology, PathBuf, PathBuf)> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
    let mesh = topo.path("mesh.yaml");
    MeshConfig::standard(SERVER_PORT)
        .write(&mesh)
        .expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    Some((topo, mesh, ca))
}

fn start_tunnel(
    topo: &Topology,
    node: &str,
    mesh: &Path,
    ca: &Path,
    extra: &[(&str, &str)],
) -> Tunnel {
    let mut env = tunnel_env(node, Mesh::File(mesh), Ca::Dir(ca));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    topo.start_tunnel(node, bin(), &env_refs(&env))
        .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
}

/// A TCP connection from `src` to `dst` with the tunnel's mark (past the capture rules), that
/// sends nothing.
fn silent_connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(TUNNEL_MARK)?;
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    socket.connect(&dst.into())?;
    Ok(socket.into())
}

/// True when the peer has closed `stream` (EOF or reset) within `wait`; false when it is
/// still open and silent.
fn closed_by_peer(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the tunnel sent {n} bytes to a client that never spoke"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

fn roundtrip(ns: &Netns, src: Ipv4Addr, what: &str) {
    let data = what.as_bytes().to_vec();
    ns.run(move || -> std::io::Result<()> {
        let mut s = connect_from(src, server_addr())?;
        echo_roundtrip(&mut s, &data)
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// `ss -tno` lines of established connections in `ns` matching `filter`, with their timers.
fn with_timers(ns: &Netns, filter: &str) -> Vec<String> {
    ns.exec("ss", &["-Htno", "state", "established", filter])
        .expect("ss")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn connections_over_the_per_source_cap_are_closed_and_logged_and_hbone_sockets_keep_alive() {
    let Some((topo, mesh, ca)) = topology("bounds_cap") else {
        return;
    };
    let t2 = start_tunnel(
        &topo,
        "n2",
        &mesh,
        &ca,
        &[
            ("HBONE_MAX_CONNECTIONS_PER_IP", "3"),
            ("HBONE_HANDSHAKE_TIMEOUT", "5m"),
        ],
    );
    let _t1 = start_tunnel(&topo, "n1", &mesh, &ca, &[]);
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    roundtrip(topo.ns("n1"), addr::CLIENT, "over HBONE");

    // Both ends of the real HBONE connection carry TCP keepalive: once nothing is in flight,
    // ss shows its timer (timer:(keepalive,...)).
    for (ns, filter) in [("n2", "( sport = :15008 )"), ("n1", "( dport = :15008 )")] {
        let keepalive = || {
            let lines = with_timers(topo.ns(ns), filter);
            !lines.is_empty() && lines.iter().all(|l| l.contains("timer:(keepalive"))
        };
        assert_eventually!(
            keepalive(),
            Duration::from_secs(10),
            "{ns}'s HBONE sockets:\n{}",
            with_timers(topo.ns(ns), filter).join("\n")
        );
    }

    let n1 = topo.ns("n1");
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            n1.run(|| silent_connect(addr::NODE1, hbone_addr()))
                .unwrap()
        })
        .collect();
    let mut extra = n1
        .run(|| silent_connect(addr::NODE1, hbone_addr()))
        .unwrap();
    assert!(
        closed_by_peer(&mut extra, Duration::from_secs(15)),
        "a fourth connection from one address was kept"
    );
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            !closed_by_peer(s, Duration::from_millis(300)),
            "connection {i} under the cap was closed"
        );
    }
    assert_eventually!(
        t2.log().contains("at the connection cap")
            && t2.log().contains("HBONE_MAX_CONNECTIONS_PER_IP"),
        Duration::from_secs(10),
        "no cap line in n2's log:\n{}",
        t2.log_tail(20)
    );
    // Another source is not affected, and real traffic still flows.
    roundtrip(
        topo.ns("n1"),
        addr::CLIENT2,
        "from another identity and address",
    );
    // Places are freed when connections end.
    drop(held);
    assert_eventually!({
        let mut again = n1
            .run(|| silent_connect(addr::NODE1, hbone_addr()))
            .unwrap();
        !closed_by_peer(&mut again, Duration::from_millis(500))
    });
}

/// Raises this test process's soft descriptor limit to the hard one (it holds 10,000 sockets).
fn raise_own_limit() -> (u64, u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    (soft, hard)
}

/// The soft and hard `Max open files` of `pid`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

#[test]
fn ten_thousand_silent_clients_are_reaped_while_hbone_traffic_flows() {
    const SILENT: usize = 10_000;
    let Some((topo, mesh, ca)) = topology("bounds_flood") else {
        return;
    };
    let (_, hard) = raise_own_limit();
    assert!(
        hard >= SILENT as u64 + 1000,
        "RLIMIT_NOFILE hard limit {hard} is too low for {SILENT} clients and the tunnel"
    );
    // The tunnel starts with a soft limit too low for the flood and must raise it itself.
    setrlimit(Resource::RLIMIT_NOFILE, 4096, hard).unwrap();
    let t2 = start_tunnel(
        &topo,
        "n2",
        &mesh,
        &ca,
        &[
            ("HBONE_HANDSHAKE_TIMEOUT", "3s"),
            ("HBONE_MAX_CONNECTIONS", "20000"),
            ("HBONE_MAX_CONNECTIONS_PER_IP", "20000"),
        ],
    );
    raise_own_limit();
    let (soft, hard_seen) = open_files_limit(t2.pid());
    assert_eq!(
        soft, hard_seen,
        "the tunnel did not raise its soft open files limit"
    );
    let _t1 = start_tunnel(&topo, "n1", &mesh, &ca, &[]);
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    roundtrip(topo.ns("n1"), addr::CLIENT, "warm-up");
    // Settled: the warm-up's delivery socket is closed.
    thread::sleep(Duration::from_millis(500));
    // Descriptors besides the HBONE connections held from peer tunnels (the flood opens one
    // more of those, from client2, which its pool keeps).
    let others = |ns: &Netns| {
        let fds = fd_count(t2.pid()).unwrap();
        fds.saturating_sub(ns.established_on_local_port(port::HBONE).unwrap())
    };
    let baseline = others(topo.ns("n2"));

    // Four threads open 2,500 silent connections each and hold them.
    let openers: Vec<_> = (0..4)
        .map(|_| {
            topo.ns("n1").spawn(|| {
                (0..SILENT / 4)
                    .map(|_| silent_connect(addr::NODE1, hbone_addr()))
                    .collect::<std::io::Result<Vec<TcpStream>>>()
            })
        })
        .collect();
    // Meanwhile real traffic keeps flowing: on the pooled connection, and over a new HBONE
    // connection (another identity) that must get through the flood's handshakes.
    roundtrip(
        topo.ns("n1"),
        addr::CLIENT,
        "during the flood (pooled connection)",
    );
    roundtrip(
        topo.ns("n1"),
        addr::CLIENT2,
        "during the flood (new connection)",
    );
    let mut silent: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|h| h.join().unwrap().expect("opening a silent connection"))
        .collect();
    assert_eq!(silent.len(), SILENT);
    let peak = fd_count(t2.pid()).unwrap();
    roundtrip(
        topo.ns("n1"),
        addr::CLIENT2,
        "with every silent client connected",
    );

    // Every silent client is closed by the tunnel (the handshake deadline), none kept.
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, Duration::from_secs(60)),
            "silent client {i} is still open"
        );
    }
    drop(silent);
    assert_eventually!(
        others(topo.ns("n2")) <= baseline,
        Duration::from_secs(30),
        "the tunnel holds {} descriptors besides HBONE connections, {baseline} before the flood",
        others(topo.ns("n2"))
    );
    roundtrip(topo.ns("n1"), addr::CLIENT, "after the flood");
    eprintln!(
        "{SILENT} silent clients: tunnel fds (besides HBONE connections) {baseline} before, {peak} in all when every client had connected, {} after",
        others(topo.ns("n2"))
    );
}
