//! SIGTERM end to end (dedicated mode): the tunnel stops accepting, lets live connections
//! finish up to its drain deadline (`CONNECTION_TERMINATION_DEADLINE`), cuts what is left,
//! says how many in its last line and exits; its HBONE peers get GOAWAY and move their next
//! streams to a new connection — to the tunnel that replaces it.
//!
//! Standard topology (`Topology::two_node`, real iptables capture): n1 — client 10.77.1.10 |
//! n2 — server 10.77.2.10:8080 (an echo server). One `nodetunnel` per node, configured from a
//! local mesh file and a shared CA directory.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nodetunnel_testbed::eventually::wait_until;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, tunnel_env,
    Ca, Capture, Mesh, MeshConfig, Server, Topology, Tunnel,
};

const SERVER_PORT: u16 = 8080;
/// Longer than any of these tests takes: a connection that ends on its own is never cut.
const LONG_DEADLINE: &str = "60s";
/// Short enough to wait for: the cut-at-the-deadline test.
const SHORT_DEADLINE: &str = "2s";
/// How long a tunnel may take to exit once its drain has nothing left to wait for.
const EXIT_WAIT: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

/// The standard topology with the mesh file and a CA written, and the echo server on the
/// server pod.
struct Fixture {
    // Drop order: the server and tunnels before the topology removes their directory.
    _server: Server,
    mesh: PathBuf,
    ca: PathBuf,
    topo: Topology,
}

impl Fixture {
    fn start(test: &str) -> Option<Fixture> {
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
        let server =
            Server::start(topo.ns("n2"), server_addr(), echo_handler).expect("the echo server");
        Some(Fixture {
            _server: server,
            mesh,
            ca,
            topo,
        })
    }

    /// The environment of `node`'s tunnel, with `deadline` and `log` (`RUST_LOG`).
    fn env(&self, node: &str, deadline: &str, log: &str) -> Vec<(String, String)> {
        let mut env = tunnel_env(node, Mesh::File(&self.mesh), Ca::Dir(&self.ca));
        env.retain(|(k, _)| k != "RUST_LOG");
        env.push(("RUST_LOG".into(), log.into()));
        env.push(("CONNECTION_TERMINATION_DEADLINE".into(), deadline.into()));
        env
    }

    /// Starts `node`'s tunnel and waits until it is ready.
    fn tunnel(&self, node: &str, deadline: &str) -> Tunnel {
        let env = self.env(node, deadline, "info");
        self.topo
            .start_tunnel(node, bin(), &env_refs(&env))
            .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
    }

    /// A connection from the client pod to the echo server (through n1's tunnel).
    fn connect(&self) -> io::Result<TcpStream> {
        let s = self
            .topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT, server_addr()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }
}

/// Waits until `tunnel` exited; panics with its log tail if it does not within [`EXIT_WAIT`].
fn wait_exit(tunnel: &mut Tunnel, why: &str) -> ExitStatus {
    let mut status = None;
    let exited = wait_until(EXIT_WAIT, || {
        status = tunnel.try_wait().expect("waitpid");
        status.is_some()
    });
    assert!(
        exited,
        "{why}: still running; log:\n{}",
        tunnel.log_tail(30)
    );
    status.expect("exited")
}

/// The `cut=` count of the tunnel's last line (`drained: ...`), which says how its drain ended.
fn drained_cut(tunnel: &Tunnel) -> Option<u64> {
    let log = tunnel.log();
    let line = log.lines().rev().find(|l| l.contains("drained:"))?;
    nodetunnel_testbed::tunnel::field_u64(line, "cut")
}

/// True when the peer closed `s` (EOF or reset) rather than the read timing out.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn sigterm_keeps_a_live_connection_moving_refuses_new_ones_and_exits_once_it_ends() {
    let Some(f) = Fixture::start("drain_live") else {
        return;
    };
    let _t2 = f.tunnel("n2", LONG_DEADLINE);
    let mut t1 = f.tunnel("n1", LONG_DEADLINE);
    let mut live = f.connect().expect("a connection before SIGTERM");
    echo_roundtrip(&mut live, b"before SIGTERM").expect("echo before SIGTERM");

    t1.signal_term().expect("SIGTERM");
    assert_eventually!(
        t1.log().contains("SIGTERM: draining"),
        Duration::from_secs(10),
        "no drain after SIGTERM:\n{}",
        t1.log_tail(20)
    );
    // New connections are refused: the capture rules still redirect to :15001, where the
    // draining tunnel no longer listens.
    assert_eventually!(
        f.connect()
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused),
        Duration::from_secs(10),
        "a new connection after SIGTERM was not refused"
    );
    // The live one keeps moving data, both ways, for as long as it lives.
    for round in 0..20 {
        echo_roundtrip(
            &mut live,
            format!("while draining, round {round}").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("echo {round} while draining: {e}"));
    }
    assert!(
        t1.try_wait().expect("waitpid").is_none(),
        "the tunnel exited while a connection was live:\n{}",
        t1.log_tail(20)
    );

    drop(live);
    let status = wait_exit(&mut t1, "the last connection ended");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        drained_cut(&t1),
        Some(0),
        "the exit line reports nothing cut:\n{}",
        t1.log_tail(10)
    );
}

#[test]
fn a_connection_outliving_the_deadline_is_cut_and_the_exit_line_counts_it() {
    let Some(f) = Fixture::start("drain_cut") else {
        return;
    };
    let _t2 = f.tunnel("n2", LONG_DEADLINE);
    let mut t1 = f.tunnel("n1", SHORT_DEADLINE);
    let mut live = f.connect().expect("a connection before SIGTERM");
    echo_roundtrip(&mut live, b"before SIGTERM").expect("echo before SIGTERM");

    t1.signal_term().expect("SIGTERM");
    let status = wait_exit(&mut t1, "the drain deadline passed");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        drained_cut(&t1),
        Some(1),
        "the exit line counts the one cut connection:\n{}",
        t1.log_tail(10)
    );
    assert!(
        t1.log().contains("deadline=2s"),
        "the drain used the configured deadline:\n{}",
        t1.log_tail(10)
    );
    assert!(
        closed_by_peer(&mut live),
        "the cut connection is closed on the client's side"
    );
}

#[test]
fn a_draining_peer_sends_goaway_and_the_next_stream_goes_to_its_replacement() {
    let Some(f) = Fixture::start("drain_goaway") else {
        return;
    };
    let mut old_n2 = f.tunnel("n2", LONG_DEADLINE);
    // n1's tunnel logs when it sees a peer going away (debug level of the HBONE client).
    let env = f.env("n1", LONG_DEADLINE, "info,nodetunnel::hbone=debug");
    let t1 = f
        .topo
        .start_tunnel("n1", bin(), &env_refs(&env))
        .expect("starting n1's tunnel");
    let mut live = f.connect().expect("a connection through the old n2 tunnel");
    echo_roundtrip(&mut live, b"before the upgrade").expect("echo before the upgrade");

    // The replacement binds next to the old one (SO_REUSEPORT) in the same namespace; its
    // readiness port is shared with the old one, so its log says when it listens.
    let env = f.env("n2", LONG_DEADLINE, "info");
    let new_log = f.topo.path("n2-tunnel-new.log");
    let new_n2 = Tunnel::spawn(f.topo.ns("n2"), bin(), &env_refs(&env), &new_log)
        .expect("starting the replacement");
    assert_eventually!(
        new_n2.log().contains("ready: outbound"),
        Duration::from_secs(20),
        "the replacement did not start listening:\n{}",
        new_n2.log_tail(20)
    );
    old_n2.signal_term().expect("SIGTERM to the old n2 tunnel");

    // Every new connection works; soon they reach the replacement: n1's pool saw the GOAWAY,
    // took the old HBONE connection out and opened a new one, which only the replacement
    // accepts (the old tunnel closed its listeners).
    let mut attempts = 0;
    let moved = wait_until(Duration::from_secs(20), || {
        attempts += 1;
        let mut s = f.connect().expect("a new connection while n2 drains");
        echo_roundtrip(&mut s, format!("attempt {attempts}").as_bytes())
            .unwrap_or_else(|e| panic!("echo on attempt {attempts}: {e}"));
        !new_n2
            .access_lines(&[("direction", "inbound"), ("protocol", "HBONE")])
            .is_empty()
    });
    assert!(
        moved,
        "no connection reached the replacement after {attempts} attempts; n1:\n{}",
        t1.log_tail(20)
    );
    assert!(
        t1.log().contains("peer tunnel is going away (GOAWAY)"),
        "n1 observed the GOAWAY:\n{}",
        t1.log_tail(20)
    );
    // The stream already on the old tunnel carries on there.
    echo_roundtrip(&mut live, b"after the replacement took over").expect("echo on the old one");
    assert!(
        old_n2.try_wait().expect("waitpid").is_none(),
        "the old tunnel exited with a live stream:\n{}",
        old_n2.log_tail(20)
    );
    drop(live);
    let status = wait_exit(&mut old_n2, "its last stream ended");
    assert!(status.success(), "exit status {status}");
    assert_eq!(drained_cut(&old_n2), Some(0), "{}", old_n2.log_tail(10));
    println!("goaway: {attempts} connections, all echoed; the replacement took over");
}
