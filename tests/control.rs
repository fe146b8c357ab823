//! End-to-end tests of the control-plane path: real `nodetunnel-control` and `nodetunnel`
//! processes in network namespaces, delta xDS and the CA over real gRPC with TLS and bearer
//! tokens bound to each tunnel's node, traffic over HBONE between them.
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10, client2 10.77.1.11) and n2
//! 10.77.2.1 (server 10.77.2.10); the control plane runs in n1 on 10.77.1.1:15012.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip, Pattern};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, node_token,
    set_env, spiffe_id, tunnel_env, Ca, Capture, ControlPlane, Mesh, MeshConfig, Server, Topology,
    Tunnel, Workload,
};
use serde_json::Value;

const SERVER_PORT: u16 = 8080;
const SYNC_DEADLINE: Duration = Duration::from_secs(20);

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

fn topology(test: &str) -> Option<Topology> {
    if !namespaces_available(test) {
        return None;
    }
    Some(Topology::two_node(test, Capture::ALL).expect("building the topology"))
}

/// Writes `cfg` to mesh.yaml and a new CA to ca/; returns both paths.
fn mesh_files(topo: &Topology, cfg: &MeshConfig) -> (PathBuf, PathBuf) {
    let mesh = topo.path("mesh.yaml");
    cfg.write(&mesh).expect("writing mesh.yaml");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    (mesh, ca)
}

fn start_control(topo: &Topology, mesh: &Path, ca: &Path) -> ControlPlane {
    topo.start_control_plane("n1", &control_bin(), mesh, ca, &[])
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"))
}

fn start_tunnel(topo: &Topology, node: &str, env: &[(String, String)]) -> Tunnel {
    topo.start_tunnel(node, bin(), &env_refs(env))
        .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
}

fn spawn_tunnel(topo: &Topology, node: &str, env: &[(String, String)]) -> Tunnel {
    let log = topo.path(&format!("{node}-spawned.log"));
    Tunnel::spawn(topo.ns(node), bin(), &env_refs(env), &log)
        .unwrap_or_else(|e| panic!("spawning the tunnel on {node}: {e}"))
}

fn config_dump(tunnel: &Tunnel) -> Value {
    tunnel
        .config_dump()
        .unwrap_or_else(|e| panic!("/config_dump: {e}"))
}

fn workload_uids(dump: &Value) -> Vec<String> {
    dump["workloads"]
        .as_array()
        .expect("workloads is a list")
        .iter()
        .map(|w| w["uid"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn connect(topo: &Topology, src: std::net::Ipv4Addr, dst: SocketAddr) -> TcpStream {
    topo.ns("n1")
        .run(move || connect_from(src, dst))
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"))
}

/// Echoes a short message over `stream` every 20 ms on its own thread until stopped; counts
/// round trips and remembers the first failure. A long-lived connection that must keep
/// flowing through whatever the test does meanwhile.
struct Chatter {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Chatter {
    fn start(mut stream: TcpStream) -> Chatter {
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let (stop2, count) = (stop.clone(), round_trips.clone());
        let thread = thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let msg = Pattern::new(i).bytes(512);
                echo_roundtrip(&mut stream, &msg)
                    .map_err(|e| format!("round trip {i} failed: {e}"))?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        Chatter {
            stop,
            round_trips,
            thread: Some(thread),
        }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more round trips completed (proof it is flowing right now).
    fn assert_flowing(&self, what: &str) {
        let before = self.round_trips();
        assert_eventually!(
            self.round_trips() >= before + 5,
            Duration::from_secs(10),
            "the long-lived connection stopped flowing {what} (at {before} round trips)"
        );
    }

    /// Stops; panics with the failure if any round trip failed.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let result = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("chatter panicked");
        if let Err(e) = result {
            panic!("the long-lived connection broke: {e}");
        }
    }
}

// ----------------------------------------------------------------------------------- tests

/// Initial sync, an update and a delete, each pushed by the control plane after the file
/// changes and applied by the running tunnels (no restart).
#[test]
fn initial_sync_update_and_delete_reach_running_tunnels() {
    let Some(topo) = topology("xds_update") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (mesh, ca) = mesh_files(&topo, &cfg);
    let cp = start_control(&topo, &mesh, &ca);
    let _t2 = start_tunnel(
        &topo,
        "n2",
        &tunnel_env("n2", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let t1 = start_tunnel(
        &topo,
        "n1",
        &tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp)),
    );

    // Initial sync: everything in the file, nothing else; the xDS view says so.
    let dump = config_dump(&t1);
    let mut uids = workload_uids(&dump);
    uids.sort();
    let mut expected: Vec<String> = cfg.workloads.iter().map(Workload::uid).collect();
    expected.sort();
    assert_eq!(uids, expected);
    assert_eq!(dump["services"].as_array().map(Vec::len), Some(1), "{dump}");
    assert_eq!(
        dump["xds"]["connected"],
        Value::Bool(true),
        "{}",
        dump["xds"]
    );
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let mut s = connect(&topo, addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"initial sync works").expect("echo over HBONE");
    drop(s);

    // Update: the service's port 80 now maps to 9090, served by a second server.
    let server_9090 = Server::start(topo.ns("n2"), (addr::SERVER, 9090).into(), echo_handler)
        .expect("server on 9090");
    cfg.services[0].ports = vec![(80, 9090)];
    cfg.workload_mut("server").services[0].1 = vec![(80, 9090)];
    cfg.write(&mesh).unwrap();
    assert_eventually!(
        config_dump(&t1)["services"][0]["ports"]["80"] == 9090,
        SYNC_DEADLINE,
        "the port update never reached n1"
    );
    let vip: SocketAddr = (addr::SERVICE_VIP, 80).into();
    let mut s = connect(&topo, addr::CLIENT, vip);
    echo_roundtrip(&mut s, b"via the VIP, after the update").expect("echo via the VIP");
    drop(s);
    assert_eq!(
        server_9090.accepted(),
        1,
        "the VIP did not follow the update"
    );
    assert_eq!(
        server.accepted(),
        1,
        "the old target port got the VIP connection"
    );

    // Delete: client2 disappears from the tunnels' state.
    let client2 = cfg.workload_mut("client2").uid();
    cfg.workloads.retain(|w| w.name != "client2");
    cfg.write(&mesh).unwrap();
    assert_eventually!(
        !workload_uids(&config_dump(&t1)).contains(&client2),
        SYNC_DEADLINE,
        "the delete never reached n1"
    );
    let dump = config_dump(&t1);
    assert_eq!(workload_uids(&dump).len(), 2, "{dump}");
    assert_eq!(
        dump["xds"]["connects"], 1,
        "updates must arrive on the same stream: {}",
        dump["xds"]
    );
    // The control plane pushed only what changed, per its view of n1's stream: the initial 4
    // (3 workloads + 1 service), then the service and the server workload whose ports changed
    // (2), then one removal.
    let connections: Value =
        serde_json::from_str(&cp.status("/debug/connections").expect("status")).unwrap();
    let n1 = connections["connections"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|c| {
                c["node_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("nodetunnel-n1."))
            })
        })
        .unwrap_or_else(|| panic!("no stream from n1: {connections}"));
    let address = &n1["types"]["Address"];
    assert_eq!(address["resources_sent"], 6, "{address}");
    assert_eq!(address["removals_sent"], 1, "{address}");
}

/// The control plane is killed while a connection is streaming and while the mesh changes;
/// the tunnels keep serving from their last good state (old and new connections), and when it
/// comes back they resync (the change made meanwhile arrives) without restarting.
#[test]
fn control_plane_restart_resyncs_and_traffic_never_stops() {
    let Some(topo) = topology("xds_restart") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (mesh, ca) = mesh_files(&topo, &cfg);
    let mut cp = start_control(&topo, &mesh, &ca);
    let _t2 = start_tunnel(
        &topo,
        "n2",
        &tunnel_env("n2", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let t1 = start_tunnel(
        &topo,
        "n1",
        &tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let chatter = Chatter::start(connect(&topo, addr::CLIENT, server_addr()));
    chatter.assert_flowing("before the control plane goes away");

    cp.kill();
    assert_eventually!(
        config_dump(&t1)["xds"]["connected"] == false,
        SYNC_DEADLINE,
        "n1 did not notice the control plane went away"
    );
    chatter.assert_flowing("while the control plane is down");
    let mut s = connect(&topo, addr::CLIENT2, server_addr());
    echo_roundtrip(&mut s, b"new connection, control plane down")
        .expect("a new connection while the control plane is down");
    drop(s);
    assert!(t1.is_ready(), "the last good state keeps the tunnel ready");

    // Meanwhile the mesh changes; the restarted control plane must deliver it.
    cfg = cfg.with_workload(Workload::new("late", addr::NON_MESH, "n2"));
    cfg.write(&mesh).unwrap();
    cp.restart().expect("restarting the control plane");
    let late = Workload::new("late", addr::NON_MESH, "n2").uid();
    assert_eventually!(
        workload_uids(&config_dump(&t1)).contains(&late),
        SYNC_DEADLINE,
        "n1 never resynced after the control plane came back"
    );
    let dump = config_dump(&t1);
    assert_eq!(
        dump["xds"]["connected"],
        Value::Bool(true),
        "{}",
        dump["xds"]
    );
    assert!(
        dump["xds"]["connects"].as_u64().unwrap_or(0) >= 2,
        "expected a second stream: {}",
        dump["xds"]
    );
    chatter.assert_flowing("after the resync");
    chatter.finish();
    assert_eq!(
        server.accepted(),
        2,
        "the long-lived and the one new connection"
    );
}

/// Certificates come from the control plane's CA with a 4 s lifetime, so they are renewed
/// about every 2 s; a long-lived HBONE connection keeps flowing across several renewals, and
/// new connections keep working with the renewed certificates.
#[test]
fn certificates_rotate_while_a_long_hbone_connection_flows() {
    let Some(topo) = topology("cert_rotation") else {
        return;
    };
    let (mesh, ca) = mesh_files(&topo, &MeshConfig::standard(SERVER_PORT));
    let cp = start_control(&topo, &mesh, &ca);
    let env = |node: &str| {
        let mut env = tunnel_env(node, Mesh::Control(&cp), Ca::Control(&cp));
        set_env(&mut env, "SECRET_TTL", "4s");
        env
    };
    let t2 = start_tunnel(&topo, "n2", &env("n2"));
    let t1 = start_tunnel(&topo, "n1", &env("n1"));
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let chatter = Chatter::start(connect(&topo, addr::CLIENT, server_addr()));
    let issued = |t: &Tunnel| config_dump(t)["certificateIssuances"].as_u64().unwrap_or(0);
    let (n1_start, n2_start) = (issued(&t1), issued(&t2));
    assert!(n1_start >= 1 && n2_start >= 1, "{n1_start} / {n2_start}");

    // Three renewals on each side while the connection flows.
    assert_eventually!(
        issued(&t1) >= n1_start + 3 && issued(&t2) >= n2_start + 3,
        Duration::from_secs(30),
        "certificates were not renewed"
    );
    chatter.assert_flowing("after the certificates rotated");
    // New connections (new HBONE streams, and a new identity's first connection) still work.
    let mut s = connect(&topo, addr::CLIENT2, server_addr());
    echo_roundtrip(&mut s, b"after rotation").expect("a new connection after rotation");
    drop(s);
    chatter.finish();
    // Every issuance came from the control plane's CA, for known identities only.
    let log = cp.log();
    assert!(
        log.contains(&spiffe_id("default", "server")),
        "the control plane never issued for the server: {}",
        cp.log_tail(20)
    );
}

/// The tunnel starts while its CA is not running: it says why it is not ready (naming the CA's
/// address and the cause), keeps retrying, and becomes ready once the CA appears.
#[test]
fn unreachable_ca_at_start_is_retried_until_it_comes() {
    let Some(topo) = topology("ca_unreachable") else {
        return;
    };
    let (mesh, ca) = mesh_files(&topo, &MeshConfig::standard(SERVER_PORT));
    // Start the control plane once (it writes its token files), then kill it: its address is
    // known but nothing answers there. n2 reads the mesh from the file and only needs the CA.
    let mut cp = start_control(&topo, &mesh, &ca);
    cp.kill();
    let mut t2 = spawn_tunnel(
        &topo,
        "n2",
        &tunnel_env("n2", Mesh::File(&mesh), Ca::Control(&cp)),
    );
    assert_eventually!(
        t2.log().contains("cannot reach the CA"),
        SYNC_DEADLINE,
        "no clear error about the unreachable CA"
    );
    let log = t2.log();
    assert!(
        log.contains(&cp.url()),
        "the error must name the CA address: {log}"
    );
    assert!(!t2.is_ready(), "ready without a certificate");

    cp.restart().expect("starting the CA");
    t2.wait_ready(SYNC_DEADLINE)
        .expect("ready once the CA is reachable");
    let _t1 = start_tunnel(
        &topo,
        "n1",
        &tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let mut s = connect(&topo, addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"after the CA came up").expect("echo over HBONE");
}

/// A tunnel whose token the control plane does not accept stays not-ready and says exactly
/// that, in its log and in /config_dump.
#[test]
fn rejected_token_is_reported_with_its_cause() {
    let Some(topo) = topology("bad_token") else {
        return;
    };
    let (mesh, ca) = mesh_files(&topo, &MeshConfig::standard(SERVER_PORT));
    let cp = start_control(&topo, &mesh, &ca);
    let wrong = cp
        .token_file("wrong-token", "not-a-token-it-knows")
        .unwrap();
    let mut env = tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp));
    set_env(&mut env, "XDS_AUTH_TOKEN", wrong.to_str().unwrap());
    set_env(&mut env, "CA_AUTH_TOKEN", wrong.to_str().unwrap());
    let t1 = spawn_tunnel(&topo, "n1", &env);
    assert_eventually!(
        t1.log().contains("rejected our credentials"),
        SYNC_DEADLINE,
        "no clear error about the rejected token"
    );
    let log = t1.log();
    assert!(
        log.contains("bearer token not accepted"),
        "the cause must be named: {log}"
    );
    assert!(
        log.contains(&cp.url()),
        "the control plane must be named: {log}"
    );
    assert!(
        !log.contains("not-a-token-it-knows"),
        "the token itself must not be logged"
    );
    assert!(!t1.is_ready());
    let dump = config_dump(&t1);
    let last = dump["xds"]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("UNAUTHENTICATED"), "{}", dump["xds"]);
}

/// A tunnel holding another node's token (n1's tunnel with n2's) gets no certificate for its
/// own node's workloads: the CA's refusal reaches its log naming the identity and the token's
/// node, and it stays not ready. Once the control plane's token file binds that token to n1,
/// its next retry is issued and traffic flows — no restart of either process.
#[test]
fn another_nodes_token_gets_no_certificates_until_rebound() {
    let Some(topo) = topology("node_token") else {
        return;
    };
    let (mesh, ca) = mesh_files(&topo, &MeshConfig::standard(SERVER_PORT));
    let cp = start_control(&topo, &mesh, &ca);
    let _t2 = start_tunnel(
        &topo,
        "n2",
        &tunnel_env("n2", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let n2_token = cp.node_token_file("n2");
    let mut env = tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp));
    set_env(&mut env, "XDS_AUTH_TOKEN", n2_token.to_str().unwrap());
    set_env(&mut env, "CA_AUTH_TOKEN", n2_token.to_str().unwrap());
    let mut t1 = spawn_tunnel(&topo, "n1", &env);

    let refusal = format!(
        "token \"tunnel on n2\" is bound to node \"n2\", and no workload on \"n2\" runs as {} \
         (its workloads are on \"n1\")",
        spiffe_id("default", "client")
    );
    assert_eventually!(
        t1.log().contains(&refusal),
        SYNC_DEADLINE,
        "no refusal naming the identity and the token's node"
    );
    let log = t1.log();
    assert!(log.contains("PERMISSION_DENIED"), "{log}");
    assert!(
        !log.contains(&node_token("n2")),
        "the token itself must not be logged"
    );
    assert!(!t1.is_ready(), "ready without its workloads' certificates");
    // The token itself is good: xDS (the whole mesh, as for any node) still flows.
    assert_eq!(
        config_dump(&t1)["xds"]["connected"],
        Value::Bool(true),
        "{}",
        config_dump(&t1)["xds"]
    );
    let cp_log = cp.log();
    assert!(
        cp_log
            .lines()
            .any(|l| l.contains("refused a certificate request")
                && l.contains("caller=token \"tunnel on n2\" (node \"n2\")")
                && l.contains(&spiffe_id("default", "client"))),
        "{}",
        cp.log_tail(20)
    );

    // Rebind: n2's token now speaks for n1 (and n2's running tunnel keeps what it holds).
    cp.bind_tokens(&[(&node_token("n2"), "n1")])
        .expect("rewriting the token file");
    // The manager's backoff caps at 30 s between retries; the deadline allows one full wait.
    t1.wait_ready(Duration::from_secs(45))
        .expect("ready once its token is bound to its node");
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let mut s = connect(&topo, addr::CLIENT, server_addr());
    echo_roundtrip(&mut s, b"after the token was rebound").expect("echo over HBONE");
}
