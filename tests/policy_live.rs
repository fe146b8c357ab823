//! End-to-end: a policy change reaches connections that are already open. Real
//! `nodetunnel-control` serving the mesh file over delta xDS, two real `nodetunnel` processes
//! (dedicated mode), traffic over HBONE; the test rewrites the mesh file and the control plane
//! pushes the change.
//!
//! Topology as in tests/hbone.rs: n1 10.77.1.1 (client 10.77.1.10, client2 10.77.1.11) and n2
//! 10.77.2.1 (server 10.77.2.10, echo on 8080 and 9090); the control plane runs in n1.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    set_env, spiffe_id, tunnel_env, Ca, Capture, ControlPlane, Match, Mesh, MeshConfig, Policy,
    Server, StringMatch, Topology, Tunnel,
};

const SERVER_PORT: u16 = 8080;
/// A second port of the server, reached over the same HBONE connection as the first.
const OTHER_PORT: u16 = 9090;
const SYNC_DEADLINE: Duration = Duration::from_secs(20);
/// The policy every test pushes: `client` may no longer reach the server's port 8080.
const POLICY: &str = "deny-client-8080";
/// Switches the re-check of live connections off.
const RECHECK_VAR: &str = "ENFORCE_POLICY_ON_LIVE_CONNECTIONS";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn control_bin() -> PathBuf {
    nodetunnel_testbed::sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn topology(test: &str) -> Option<Topology> {
    if !namespaces_available(test) {
        return None;
    }
    Some(Topology::two_node(test, Capture::ALL).expect("building the topology"))
}

/// The control plane serving `cfg` from `<topology dir>/mesh.yaml`, with a new CA.
fn control_plane(topo: &Topology, cfg: &MeshConfig) -> (ControlPlane, PathBuf) {
    let mesh = topo.path("mesh.yaml");
    cfg.write(&mesh).expect("writing mesh.yaml");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let cp = topo
        .start_control_plane("n1", &control_bin(), &mesh, &ca, &[])
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    (cp, mesh)
}

/// A tunnel on `node` configured by the control plane, with `extra` environment on top.
fn start_tunnel(topo: &Topology, node: &str, cp: &ControlPlane, extra: &[(&str, &str)]) -> Tunnel {
    let mut env = tunnel_env(node, Mesh::Control(cp), Ca::Control(cp));
    for (key, value) in extra {
        set_env(&mut env, key, value);
    }
    topo.start_tunnel(node, bin(), &env_refs(&env))
        .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
}

/// `client` → server:8080 denied; nothing else.
fn deny_client_to_8080() -> Policy {
    Policy::deny("default", POLICY).rule([[Match::default()
        .principal(StringMatch::exact("cluster.local/ns/default/sa/client"))
        .destination_port(SERVER_PORT)]])
}

fn to_server(port: u16) -> SocketAddr {
    (addr::SERVER, port).into()
}

/// A connection from `src` (a pod on n1) to the server's `port`, proven to carry data.
fn open(topo: &Topology, src: Ipv4Addr, port: u16, what: &str) -> TcpStream {
    let mut s = topo
        .ns("n1")
        .run(move || connect_from(src, to_server(port)))
        .unwrap_or_else(|e| panic!("{what}: connect {src} -> server:{port}: {e}"));
    echo_roundtrip(&mut s, format!("{what}: open").as_bytes())
        .unwrap_or_else(|e| panic!("{what}: first echo: {e}"));
    s
}

fn assert_flows(s: &mut TcpStream, what: &str) {
    echo_roundtrip(s, format!("{what}: still flowing").as_bytes())
        .unwrap_or_else(|e| panic!("{what} must stay up, but: {e}"));
}

/// Sends a byte and reads until the connection ends; panics if it carries data or stays open
/// past the read timeout. A reset counts as closed.
fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected closed, got {n} bytes back"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{what}: still open after the policy change")
        }
        Err(_) => {}
    }
}

/// Waits until `tunnel` holds the policy (its `/config_dump`).
fn wait_for_policy(tunnel: &Tunnel, node: &str) {
    assert_eventually!(
        tunnel.config_dump().is_ok_and(|dump| dump["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == POLICY))),
        SYNC_DEADLINE,
        "the policy never reached {node}"
    );
}

fn hbone_conns(topo: &Topology) -> usize {
    topo.ns("n2")
        .established_on_local_port(port::HBONE)
        .expect("ss")
}

// ----------------------------------------------------------------------------------- tests

/// Three live HBONE connections; a DENY policy matching one of them is pushed over xDS. That
/// one is closed (its stream reset, logged `flag=policy_revoked` naming the policy); the one
/// from another identity and the one on the same HTTP/2 connection (same client, other port)
/// keep flowing.
#[test]
fn a_pushed_deny_policy_closes_the_live_connection_it_matches_and_no_other() {
    let Some(topo) = topology("revoke_live") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (cp, mesh) = control_plane(&topo, &cfg);
    let t2 = start_tunnel(&topo, "n2", &cp, &[]);
    let _t1 = start_tunnel(&topo, "n1", &cp, &[]);
    let _server = Server::start(topo.ns("n2"), to_server(SERVER_PORT), echo_handler).unwrap();
    let _other = Server::start(topo.ns("n2"), to_server(OTHER_PORT), echo_handler).unwrap();

    let mut denied = open(&topo, addr::CLIENT, SERVER_PORT, "client -> 8080");
    let mut same_h2 = open(&topo, addr::CLIENT, OTHER_PORT, "client -> 9090");
    let mut other_identity = open(&topo, addr::CLIENT2, SERVER_PORT, "client2 -> 8080");
    // One HTTP/2 connection per source identity: the two from `client` are streams of one.
    assert_eq!(
        hbone_conns(&topo),
        2,
        "HBONE connections on n2 before the change"
    );

    cfg.policies.push(deny_client_to_8080());
    cfg.write(&mesh).unwrap();

    let revoked = t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("dst.addr", &to_server(SERVER_PORT).to_string()),
            ("flag", "policy_revoked"),
        ],
        SYNC_DEADLINE,
    );
    assert_eq!(
        field(&revoked, "src.identity"),
        Some(spiffe_id("default", "client").as_str()),
        "{revoked}"
    );
    assert!(
        revoked.contains(&format!("default/{POLICY}")),
        "the line names the policy: {revoked}"
    );
    assert_closed(&mut denied, "client -> 8080");
    // The pass that revoked it decided the others too, before revoking anything.
    assert_flows(&mut same_h2, "client -> 9090 (same HTTP/2 connection)");
    assert_flows(&mut other_identity, "client2 -> 8080");
    assert_eq!(
        hbone_conns(&topo),
        2,
        "only the stream was closed, not its HTTP/2 connection"
    );
    assert_eq!(
        t2.access_lines(&[("flag", "policy_revoked")]).len(),
        1,
        "exactly one connection revoked:\n{}",
        t2.log_tail(30)
    );
}

/// With `ENFORCE_POLICY_ON_LIVE_CONNECTIONS=false` the same policy applies to new connections
/// only: a new one is refused, the live one keeps flowing and ends normally.
#[test]
fn with_live_rechecks_switched_off_a_live_connection_outlives_the_policy() {
    let Some(topo) = topology("revoke_off") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (cp, mesh) = control_plane(&topo, &cfg);
    let t2 = start_tunnel(&topo, "n2", &cp, &[(RECHECK_VAR, "false")]);
    let _t1 = start_tunnel(&topo, "n1", &cp, &[]);
    let server = Server::start(topo.ns("n2"), to_server(SERVER_PORT), echo_handler).unwrap();

    let mut live = open(&topo, addr::CLIENT, SERVER_PORT, "client -> 8080");
    cfg.policies.push(deny_client_to_8080());
    cfg.write(&mesh).unwrap();
    wait_for_policy(&t2, "n2");

    // The policy is enforced on n2: a new connection is refused there.
    let accepted = server.accepted();
    let mut refused = topo
        .ns("n1")
        .run(|| connect_from(addr::CLIENT, to_server(SERVER_PORT)))
        .expect("connect (the outbound side accepts; n2 refuses the stream)");
    assert_closed(&mut refused, "a new client -> 8080");
    t2.wait_access_line(
        &[
            ("dst.addr", &to_server(SERVER_PORT).to_string()),
            ("flag", "policy_denied"),
        ],
        SYNC_DEADLINE,
    );
    assert_eq!(
        server.accepted(),
        accepted,
        "the refused one reached the app"
    );

    assert_flows(&mut live, "the connection opened before the policy");
    drop(live);
    assert_eventually!(
        t2.log().lines().any(|l| l.contains("connection complete")
            && field(l, "dst.addr") == Some(to_server(SERVER_PORT).to_string().as_str())),
        SYNC_DEADLINE,
        "the live connection's access line never said it completed:\n{}",
        t2.log_tail(30)
    );
    assert!(
        t2.access_lines(&[("flag", "policy_revoked")]).is_empty(),
        "a connection was revoked with re-checks off:\n{}",
        t2.log_tail(30)
    );
}

/// The plaintext path (:15006) too: two clients outside the mesh have live connections to the
/// server; a DENY policy on one client's source address is pushed. That connection is cut
/// (reset, `flag=policy_revoked`), the other keeps flowing.
#[test]
fn a_pushed_deny_policy_cuts_a_live_plaintext_connection_by_source_address() {
    let Some(topo) = topology("revoke_plain") else {
        return;
    };
    // n1 has no tunnel and no capture: its pods reach n2 as plain TCP, captured to :15006.
    topo.node("n1").set_capture(Capture::NONE).unwrap();
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (cp, mesh) = control_plane(&topo, &cfg);
    let t2 = start_tunnel(&topo, "n2", &cp, &[]);
    let _server = Server::start(topo.ns("n2"), to_server(SERVER_PORT), echo_handler).unwrap();

    let mut denied = open(&topo, addr::CLIENT2, SERVER_PORT, "10.77.1.11 -> 8080");
    let mut kept = open(&topo, addr::CLIENT, SERVER_PORT, "10.77.1.10 -> 8080");
    assert_eq!(
        topo.ns("n2")
            .established(&format!("( sport = :{} )", port::INBOUND_PLAINTEXT))
            .unwrap()
            .len(),
        2,
        "both connections through n2's :15006"
    );

    let policy = Policy::deny("default", "deny-plain-source")
        .rule([[Match::default().source_ip(&format!("{}/32", addr::CLIENT2))]]);
    cfg.policies.push(policy);
    cfg.write(&mesh).unwrap();

    let revoked = t2.wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "TCP"),
            ("flag", "policy_revoked"),
        ],
        SYNC_DEADLINE,
    );
    assert!(
        field(&revoked, "src.addr")
            .is_some_and(|src| src.starts_with(&format!("{}:", addr::CLIENT2))),
        "{revoked}"
    );
    assert!(revoked.contains("default/deny-plain-source"), "{revoked}");
    assert_closed(&mut denied, "10.77.1.11 -> 8080");
    assert_flows(&mut kept, "10.77.1.10 -> 8080");
    assert_eq!(t2.access_lines(&[("flag", "policy_revoked")]).len(), 1);
}
