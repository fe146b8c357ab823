//! Upgrades and restarts that drop nothing (shared / in-pod mode), under continuous traffic:
//! loops opening a new connection after another from the client pod to the server pod across
//! nodes (a known payload each, its echo checked) and long streams moving data the whole
//! time (every byte checked against a pattern).
//!
//! - **Tunnel upgrade**: on each node a new `nodetunnel` starts in its own namespace (a tunnel
//!   pod), connects to the node's ZDS agent, gets every pod in the snapshot and binds next to
//!   the old tunnel's listeners inside each pod (SO_REUSEPORT); the old one gets SIGTERM,
//!   closes its listeners (the kernel moves what was queued on them to the new ones) and
//!   drains: its long streams finish on it, then it exits reporting `cut=0`.
//! - **Agent restart**: the node agent process stops and a new one starts, learns the pods
//!   first and only then takes tunnels; each tunnel keeps serving meanwhile and reconnects.
//!
//! Both assert zero failed connections and zero lost or corrupted bytes, and print the counts.
//!
//! Topology: `PodTopology::two_node` with the CNI agent's in-pod rules — n1: client
//! 10.77.1.10, client2 | n2: server 10.77.2.10:8080 (echo), plain. Agents are
//! `nodetunnel-zds-agent` processes; tunnels read a local mesh file and a shared CA.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nodetunnel_testbed::eventually::wait_until;
use nodetunnel_testbed::traffic::continuous::{ContinuousTraffic, TrafficSpec};
use nodetunnel_testbed::traffic::echo_handler;
use nodetunnel_testbed::tunnel::field_u64;
use nodetunnel_testbed::{
    addr, assert_eventually, generate_ca, namespaces_available, sibling_binary, Ca, InpodMesh,
    InpodRules, Mesh, MeshBins, MeshConfig, Netns, PodTopology, Server, Tunnel, ZDS_AGENT_BIN,
};

const SERVER_PORT: u16 = 8080;
/// The drain deadline: far longer than the long streams outlive a SIGTERM here, so a cut
/// connection would be a bug, not the deadline doing its job.
const DEADLINE: &str = "60s";
/// Traffic progress (and tunnel exits) are waited for this long.
const WAIT: Duration = Duration::from_secs(30);
/// Short connections that must succeed between two steps, so each step is crossed by traffic.
const STEP_CONNECTIONS: u64 = 200;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

struct Fixture {
    // Drop order: traffic users and processes before the topology removes their namespaces.
    _server: Server,
    mesh: InpodMesh,
    topo: PodTopology,
}

impl Fixture {
    fn start(test: &str) -> Option<Fixture> {
        Fixture::start_with(test, DEADLINE)
    }

    /// [`start`](Self::start) with another drain deadline.
    fn start_with(test: &str, deadline: &str) -> Option<Fixture> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
        let config = topo.path("mesh.yaml");
        MeshConfig::standard(SERVER_PORT)
            .write(&config)
            .expect("writing the mesh config");
        let ca = topo.path("ca");
        std::fs::create_dir_all(&ca).expect("creating the CA dir");
        generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
        let zds_agent = sibling_binary(ZDS_AGENT_BIN).expect("the ZDS agent binary");
        let bins = MeshBins {
            tunnel: bin(),
            zds_agent: &zds_agent,
        };
        let mesh = InpodMesh::start(
            &topo,
            bins,
            Mesh::File(&config),
            Ca::Dir(&ca),
            &[("CONNECTION_TERMINATION_DEADLINE", deadline)],
        )
        .expect("the in-pod mesh");
        let server_pod = topo.pod("server");
        let server = Server::start(
            server_pod.ns(),
            (server_pod.ip(), SERVER_PORT).into(),
            echo_handler,
        )
        .expect("the echo server");
        Some(Fixture {
            _server: server,
            mesh,
            topo,
        })
    }

    /// Two loops of short connections and three long streams, client → server.
    fn traffic(&self) -> ContinuousTraffic {
        self.traffic_of(2, 3)
    }

    fn traffic_of(&self, short_loops: usize, long_streams: usize) -> ContinuousTraffic {
        let client = self.topo.pod("client");
        let dst: SocketAddr = (addr::SERVER, SERVER_PORT).into();
        ContinuousTraffic::start(&TrafficSpec {
            ns: client.ns().clone(),
            src: client.ip(),
            dst,
            short_loops,
            long_streams,
        })
        .expect("starting the traffic")
    }
}

/// Waits until `n` more short connections succeeded (and the long streams moved more data),
/// failing with the traffic's failures so far if they do not.
fn wait_progress(traffic: &ContinuousTraffic, n: u64, step: &str) {
    let (short, long) = (traffic.short_ok(), traffic.long_bytes());
    assert_eventually!(
        traffic.short_ok() >= short + n && traffic.long_bytes() > long,
        WAIT,
        "traffic stalled {step}: {} short ok, {} long bytes; failures: {:?}",
        traffic.short_ok(),
        traffic.long_bytes(),
        traffic.failures()
    );
}

/// Waits for `tunnel` to exit (it was sent SIGTERM).
fn wait_exit(tunnel: &mut Tunnel, node: &str) -> ExitStatus {
    let mut status = None;
    let exited = wait_until(WAIT, || {
        status = tunnel.try_wait().expect("waitpid");
        status.is_some()
    });
    assert!(
        exited,
        "the old {node} tunnel did not exit once its connections ended:\n{}",
        tunnel.log_tail(30)
    );
    status.expect("exited")
}

/// The `cut=` count of the tunnel's exit line.
fn drained_cut(tunnel: &Tunnel) -> Option<u64> {
    let log = tunnel.log();
    let line = log.lines().rev().find(|l| l.contains("drained:"))?;
    field_u64(line, "cut")
}

#[test]
fn replacing_both_tunnels_under_traffic_drops_no_connection_and_no_byte() {
    let Some(mut f) = Fixture::start("upgrade_tunnels") else {
        return;
    };
    // Every pod proxy turned on listener migration in its pod, so what is queued on the old
    // tunnel's listeners when it closes them moves to the new tunnel's.
    for pod in f.topo.pods().iter().filter(|p| p.mesh()) {
        assert_eq!(
            migrate_req_in(pod.ns()),
            "1",
            "tcp_migrate_req in {}",
            pod.name()
        );
    }
    let mut traffic = f.traffic();
    wait_progress(&traffic, STEP_CONNECTIONS, "before the upgrade");

    // Client node first, then server node; traffic keeps flowing through both upgrades.
    let mut old_tunnels = Vec::new();
    let mut late = None;
    for node in ["n1", "n2"] {
        let pod_ns = Netns::create(&format!("{}-{node}-tunnel-new", f.topo.prefix()))
            .expect("the new tunnel's namespace");
        let log = f.topo.path(&format!("{node}-tunnel-new.log"));
        let old = f
            .mesh
            .replace_tunnel(node, &pod_ns, &log)
            .unwrap_or_else(|e| panic!("starting the new {node} tunnel: {e}"));
        wait_progress(
            &traffic,
            STEP_CONNECTIONS,
            &format!("with both {node} tunnels"),
        );
        old.signal_term().expect("SIGTERM to the old tunnel");
        assert_eventually!(
            old.log().contains("SIGTERM: draining every pod"),
            WAIT,
            "{}",
            old.log_tail(20)
        );
        wait_progress(
            &traffic,
            STEP_CONNECTIONS,
            &format!("after SIGTERM on {node}"),
        );
        // New connections land on the new tunnel.
        let new = f.mesh.tunnel(node);
        let direction = if node == "n1" { "outbound" } else { "inbound" };
        assert_eventually!(
            !new.access_lines(&[("direction", direction)]).is_empty(),
            WAIT,
            "the new {node} tunnel carries no {direction} connection:\n{}",
            new.log_tail(20)
        );
        old_tunnels.push((node, old));
        if node == "n1" {
            // Long streams through the new n1 tunnel: they keep its HBONE connection to the old
            // n2 tunnel open after that one sends GOAWAY, so n1's next streams meet a
            // GOAWAY'd connection in its pool and must go to a new one (the new n2 tunnel).
            late = Some(f.traffic_of(0, 2));
        }
    }
    // The old tunnels still hold the long streams, and keep serving them.
    for (node, old) in &mut old_tunnels {
        assert!(
            old.try_wait().expect("waitpid").is_none(),
            "the old {node} tunnel exited while its long streams were live:\n{}",
            old.log_tail(20)
        );
    }
    wait_progress(&traffic, STEP_CONNECTIONS, "after both upgrades");

    // The long streams end: each old tunnel's drain has nothing left and it exits, cutting
    // nothing (its deadline is far away).
    let long = traffic.finish_long();
    let mut late = late.expect("started after the n1 upgrade");
    late.finish_long();
    for (node, old) in &mut old_tunnels {
        let status = wait_exit(old, node);
        assert!(status.success(), "old {node} tunnel: exit status {status}");
        let cut = drained_cut(old);
        println!("old {node} tunnel: exited {status}, exit line cut={cut:?}");
        assert_eq!(
            cut,
            Some(0),
            "old {node} tunnel cut connections:\n{}",
            old.log_tail(10)
        );
        // The long streams finished on the old tunnel: it logged them as they closed.
        let direction = if *node == "n1" { "outbound" } else { "inbound" };
        let long_lines = old
            .access_lines(&[("direction", direction)])
            .into_iter()
            .filter(|l| field_u64(l, "bytes_sent").is_some_and(|b| b >= 16 * 1024))
            .count();
        assert!(
            long_lines >= long.len(),
            "old {node} tunnel logged {long_lines} long connections, expected {}:\n{}",
            long.len(),
            old.log_tail(20)
        );
    }
    wait_progress_short(&traffic, "after the old tunnels exited");
    let late = late.stop();
    let report = traffic.stop();
    println!("tunnel upgrade on n1 and n2: {report}");
    for (i, l) in report.long.iter().enumerate() {
        println!(
            "  long stream {i} (old n1 → old n2): {} bytes verified",
            l.verified
        );
    }
    for (i, l) in late.long.iter().enumerate() {
        println!(
            "  long stream {i} (new n1 → old n2): {} bytes verified",
            l.verified
        );
    }
    for r in [&report, &late] {
        assert!(r.failures.is_empty(), "failures: {:#?}", r.failures);
        assert!(
            r.long.iter().all(|l| l.error.is_none() && l.verified > 0),
            "{:?}",
            r.long
        );
    }
}

/// Like [`wait_progress`], for the short connections only (the long streams are done).
fn wait_progress_short(traffic: &ContinuousTraffic, step: &str) {
    let short = traffic.short_ok();
    assert_eventually!(
        traffic.short_ok() >= short + STEP_CONNECTIONS,
        WAIT,
        "short connections stalled {step}; failures: {:?}",
        traffic.failures()
    );
}

#[test]
fn restarting_the_node_agents_under_traffic_drops_no_connection_and_no_byte() {
    let Some(mut f) = Fixture::start("upgrade_agents") else {
        return;
    };
    let pids: Vec<u32> = f.mesh.pids();
    let traffic = f.traffic();
    wait_progress(&traffic, STEP_CONNECTIONS, "before the restarts");
    for node in ["n1", "n2"] {
        let pods: Vec<_> = f.topo.pods_on(node).filter(|p| p.mesh()).collect();
        f.mesh
            .restart_agent(node, pods)
            .unwrap_or_else(|e| panic!("restarting the {node} agent: {e}"));
        wait_progress(
            &traffic,
            STEP_CONNECTIONS,
            &format!("after the {node} agent restart"),
        );
    }
    // The same tunnel processes served throughout.
    assert_eq!(f.mesh.pids(), pids, "a tunnel was replaced");
    for node in ["n1", "n2"] {
        let tunnel = f.mesh.tunnel_mut(node);
        assert!(
            tunnel.try_wait().expect("waitpid").is_none(),
            "the {node} tunnel exited:\n{}",
            tunnel.log_tail(20)
        );
        assert!(
            tunnel.log().contains("node agent connection lost"),
            "the {node} tunnel saw its agent go:\n{}",
            tunnel.log_tail(20)
        );
    }
    let mut report = traffic.stop();
    report.failures.sort();
    println!("node agent restart on n1 and n2: {report}");
    assert!(
        report.failures.is_empty(),
        "failures: {:#?}",
        report.failures
    );
    assert!(
        report
            .long
            .iter()
            .all(|l| l.error.is_none() && l.verified > 0),
        "{:?}",
        report.long
    );
}

/// The listener-migration sysctl, as a thread inside a namespace sees it.
const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// `tcp_migrate_req` in `ns`.
fn migrate_req_in(ns: &Netns) -> String {
    ns.run(|| std::fs::read_to_string(TCP_MIGRATE_REQ).expect("reading tcp_migrate_req"))
        .trim()
        .to_owned()
}

/// Connects `n` clients to `addr` while two SO_REUSEPORT listeners (the old and the new
/// tunnel's) are bound there and neither accepts, so the kernel queues some on each; then
/// closes the old one and accepts everything from the new one. Returns (accepted by the new
/// listener, clients whose connection was reset). Runs inside a namespace of its own.
fn close_one_of_two_listeners(addr: SocketAddr, n: usize) -> (usize, usize) {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let listener = || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_reuse_port(true).expect("SO_REUSEPORT");
        s.bind(&addr.into()).expect("bind");
        s.listen(1024).expect("listen");
        std::net::TcpListener::from(s)
    };
    let (old, new) = (listener(), listener());
    let clients: Vec<std::net::TcpStream> = (0..n)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect (queued, not accepted)"))
        .collect();
    drop(old);
    new.set_nonblocking(true).expect("nonblocking");
    // A handshake still in flight when the old listener closed (its final ACK not processed
    // yet, as on a loaded machine) is migrated when that ACK arrives, a moment later: keep
    // accepting until every client is in or a deadline passes (without the setting the reset
    // ones never come, so that run waits the whole deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut accepted = Vec::new();
    while accepted.len() < n && std::time::Instant::now() < deadline {
        match new.accept() {
            Ok((s, _)) => accepted.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept on the new listener: {e}"),
        }
    }
    let mut reset = 0;
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let echoed = c.write_all(b"x").and_then(|()| {
            // The server side answers if it was accepted: find it by the client's address.
            let local = c.local_addr()?;
            if let Some(s) = accepted
                .iter_mut()
                .find(|s| s.peer_addr().is_ok_and(|p| p == local))
            {
                s.set_nonblocking(false)?;
                s.write_all(b"y")?;
            }
            let mut b = [0u8; 1];
            c.read_exact(&mut b)
        });
        if echoed.is_err() {
            reset += 1;
        }
    }
    (accepted.len(), reset)
}

/// The kernel half of a zero-drop takeover: with `net.ipv4.tcp_migrate_req=1` (which every
/// pod proxy sets in its pod's namespace, `src/inpod/handover.rs`; the upgrade test checks
/// the pods have it) connections already queued on the old tunnel's listener when it closes
/// move to the new tunnel's. The control run, in a namespace without it, resets some: what
/// the setting prevents.
#[test]
fn connections_queued_on_a_closing_listener_move_to_its_reuseport_sibling() {
    if !namespaces_available("upgrade_handover") {
        return;
    }
    const CLIENTS: usize = 64;
    let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 15001).into();
    let prefix = format!("ntt{}-handover", std::process::id());
    let with = Netns::create(&format!("{prefix}-on")).expect("a namespace");
    let (moved, reset) = with.run(move || {
        std::fs::write(TCP_MIGRATE_REQ, "1").expect("setting tcp_migrate_req");
        close_one_of_two_listeners(addr, CLIENTS)
    });
    assert_eq!(
        (moved, reset),
        (CLIENTS, 0),
        "with the setting, the new listener takes every queued connection"
    );
    let without = Netns::create(&format!("{prefix}-off")).expect("a namespace");
    let (kept, lost) = without.run(move || close_one_of_two_listeners(addr, CLIENTS));
    println!(
        "listener handover of {CLIENTS} queued connections: {moved} moved with \
         tcp_migrate_req, {kept} kept and {lost} reset without"
    );
    assert!(
        lost > 0 && kept + lost == CLIENTS,
        "without the setting the old listener's queue is reset ({kept} kept, {lost} reset): \
         the control run shows the setting is what moves them"
    );
}

/// Shared mode on SIGTERM without a replacement: new connections are refused, and the exit
/// line adds up what the deadline cut in every pod — one live connection from the client pod
/// outlives a 2 s deadline, is cut, and the line says `cut=1`.
#[test]
fn a_shared_mode_drain_reports_what_its_deadline_cut() {
    let Some(mut f) = Fixture::start_with("upgrade_cut", "2s") else {
        return;
    };
    let client = f.topo.pod("client");
    let (ip, dst) = (client.ip(), (addr::SERVER, SERVER_PORT).into());
    let mut live = client
        .ns()
        .run(move || nodetunnel_testbed::connect_from(ip, dst))
        .expect("a connection from the client pod");
    nodetunnel_testbed::traffic::echo_roundtrip(&mut live, b"before SIGTERM").expect("echo");
    f.mesh.tunnel("n1").signal_term().expect("SIGTERM");
    // With no replacement, a new connection is refused: the pod's rules still redirect to
    // :15001, where nothing listens any more.
    let ns = client.ns().clone();
    assert_eventually!(
        ns.run(move || nodetunnel_testbed::connect_from(ip, dst))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        WAIT,
        "a new connection after SIGTERM was not refused"
    );
    let tunnel = f.mesh.tunnel_mut("n1");
    let status = wait_exit(tunnel, "n1");
    assert!(status.success(), "exit status {status}");
    assert!(
        tunnel.log().contains("deadline=2s"),
        "{}",
        tunnel.log_tail(10)
    );
    assert_eq!(drained_cut(tunnel), Some(1), "{}", tunnel.log_tail(10));
}
