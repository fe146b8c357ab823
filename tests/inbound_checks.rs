//! The inbound checks Istio's ztunnel makes on HBONE, proven against a real tunnel with
//! hand-made requests: a raw client (`nodetunnel_testbed::raw_hbone`, TLS + HTTP/2 of its own,
//! certificates from a test CA on the mesh's root or on a foreign one) sends CONNECTs the
//! tunnel's own client never would.
//!
//! Topology (`Topology::two_node`): n1 runs no tunnel and captures nothing, so the raw client
//! there (source 10.77.1.10) reaches n2's :15008 directly; n2 runs a dedicated tunnel serving
//! `server` 10.77.2.10 and `server2` 10.77.2.20 (its config from a file, its CA from the shared
//! CA directory the raw client also signs with).
//!
//! Each check answers a refused CONNECT with an HTTP error status on that stream only: every
//! test then opens a good stream on the same HTTP/2 connection to show it still works.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use nodetunnel_testbed::traffic::{echo_handler, request_then_read_all};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    spiffe_id, tunnel_env, Ca, Capture, ClientCert, Mesh, MeshConfig, RawHbone, RawHboneError,
    Server, TestCa, Topology, Tunnel, Workload,
};

const SERVER_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);
/// A mesh workload on n2 next to `server`: the CONNECT target that is local but not dialed.
const SERVER2: Ipv4Addr = addr::NON_MESH;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn on(ip: Ipv4Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

/// n2's tunnel, the raw client's CA and the topology they live in.
struct Bed {
    // Drop order: the tunnel (printing its log tail on panic) before the topology removes the
    // directory holding that log.
    tunnel: Tunnel,
    ca: TestCa,
    topo: Topology,
}

impl Bed {
    /// The topology above with n2's tunnel started with `extra_env`; `None` when this machine
    /// cannot run namespaced tests.
    fn start(test: &str, extra_env: &[(&str, &str)]) -> Option<Bed> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = Topology::two_node(test, Capture::ALL).expect("building the topology");
        topo.node("n1")
            .set_capture(Capture::NONE)
            .expect("clearing n1's capture");
        let config = topo.path("mesh.yaml");
        MeshConfig::standard(SERVER_PORT)
            .with_workload(Workload::new("server2", SERVER2, "n2"))
            .write(&config)
            .expect("writing the mesh config");
        let ca_dir: PathBuf = topo.path("ca");
        std::fs::create_dir_all(&ca_dir).expect("creating the CA dir");
        generate_ca(bin(), &ca_dir).expect("nodetunnel generate-ca");
        let mut env = tunnel_env("n2", Mesh::File(&config), Ca::Dir(&ca_dir));
        for (k, v) in extra_env {
            env.push((k.to_string(), v.to_string()));
        }
        let tunnel = topo
            .start_tunnel("n2", bin(), &env_refs(&env))
            .expect("starting n2's tunnel");
        let ca = TestCa::load(&ca_dir).expect("loading the mesh CA");
        Some(Bed { tunnel, ca, topo })
    }

    /// A certificate for `identity` from the mesh's CA.
    fn cert(&self, identity: &str) -> ClientCert {
        self.ca
            .issue(identity)
            .unwrap_or_else(|e| panic!("issuing {identity}: {e}"))
    }

    /// The raw client on n1 (source 10.77.1.10) connected to `dial`:15008 with `cert`.
    fn try_dial(&self, dial: Ipv4Addr, cert: &ClientCert) -> Result<RawHbone, RawHboneError> {
        RawHbone::connect(
            self.topo.ns("n1"),
            addr::CLIENT,
            on(dial, port::HBONE),
            cert,
            self.ca.roots(),
        )
    }

    /// [`try_dial`](Self::try_dial) as the mesh's `client` workload, which must work.
    fn dial(&self, dial: Ipv4Addr) -> RawHbone {
        self.try_dial(dial, &self.cert(&spiffe_id("default", "client")))
            .unwrap_or_else(|e| panic!("raw HBONE connection to {dial}: {e}"))
    }

    /// An echo server on n2 at `at`.
    fn server(&self, at: SocketAddr) -> Server {
        Server::start(self.topo.ns("n2"), at, echo_handler)
            .unwrap_or_else(|e| panic!("starting a server on {at}: {e}"))
    }

    /// n2's access line for the stream that asked for `target`, refused with `flag`.
    fn refusal_line(&self, target: SocketAddr, flag: &str) -> String {
        let target = target.to_string();
        self.tunnel
            .wait_access_line(&[("original_dst", &target), ("flag", flag)], WAIT)
    }

    /// HBONE connections n2 has accepted and still holds.
    fn hbone_conns(&self) -> usize {
        self.topo
            .ns("n2")
            .established_on_local_port(port::HBONE)
            .expect("ss")
    }
}

/// Panics unless `hbone` still carries a good stream: CONNECT to `target` is answered 200 and
/// echoes.
fn assert_still_usable(hbone: &RawHbone, target: SocketAddr, why: &str) {
    let reply = hbone
        .connect_to(target)
        .unwrap_or_else(|e| panic!("{why}: the good CONNECT to {target} failed: {e}"));
    assert_eq!(reply.status, StatusCode::OK, "{why}: CONNECT {target}");
    let mut stream = reply.into_stream().expect("a 200 carries a stream");
    stream
        .echo(b"still usable")
        .unwrap_or_else(|e| panic!("{why}: echo through {target}: {e}"));
}

/// Panics unless CONNECT `target` on `hbone` is answered `400 Bad Request` with no stream.
fn assert_bad_request(hbone: &RawHbone, target: SocketAddr) {
    let reply = hbone
        .connect_to(target)
        .unwrap_or_else(|e| panic!("CONNECT {target}: no answer on the stream: {e}"));
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "CONNECT {target} was not refused"
    );
    assert!(reply.into_stream().is_none());
}

// ----------------------------------------------------------------------------------- tests

/// A CONNECT to any of the tunnel's own ports on the dialed workload's address is refused
/// with 400 and logged as a loop, for each of 15001/15006/15008/15021/15020/15000 — every one
/// of which n2's tunnel listens on there (admin moved onto all addresses for this test, so a
/// missing check would show as a 200 for it too). The same HTTP/2 connection then carries a
/// good stream.
#[test]
fn connect_to_a_tunnel_port_is_refused_and_the_connection_stays_usable() {
    let Some(bed) = Bed::start("inbound_own_ports", &[("ADMIN_ADDR", "[::]:15000")]) else {
        return;
    };
    let server = bed.server(on(addr::SERVER, SERVER_PORT));
    let hbone = bed.dial(addr::SERVER);
    assert_eq!(hbone.server_identity(), spiffe_id("default", "server"));
    for tunnel_port in [
        port::OUTBOUND,
        port::INBOUND_PLAINTEXT,
        port::HBONE,
        port::READINESS,
        port::METRICS,
        port::ADMIN,
    ] {
        let target = on(addr::SERVER, tunnel_port);
        assert_bad_request(&hbone, target);
        let line = bed.refusal_line(target, "loop");
        assert!(line.contains("is the tunnel itself"), "{line}");
    }
    assert_still_usable(&hbone, on(addr::SERVER, SERVER_PORT), "after six refusals");
    assert_eq!(server.accepted(), 1);
    assert_eq!(bed.hbone_conns(), 1, "everything rode one HBONE connection");
}

/// The same ports reached in plaintext: a client outside the mesh connecting to one of them on
/// the workload's address is captured into :15006 and closed unanswered (its HTTP request to
/// the metrics or admin endpoint gets no byte back), logged as a loop.
#[test]
fn plaintext_to_a_tunnel_port_is_closed_unanswered() {
    let Some(bed) = Bed::start("inbound_plain_own_ports", &[("ADMIN_ADDR", "[::]:15000")]) else {
        return;
    };
    for tunnel_port in [
        port::OUTBOUND,
        port::INBOUND_PLAINTEXT,
        port::READINESS,
        port::METRICS,
        port::ADMIN,
    ] {
        let target = on(addr::SERVER, tunnel_port);
        let mut s = bed
            .topo
            .ns("n1")
            .run(move || connect_from(addr::CLIENT2, target))
            .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
        let got = request_then_read_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n")
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert!(
            got.is_empty(),
            "{target} answered a plaintext client: {:?}",
            String::from_utf8_lossy(&got)
        );
        let line = bed.refusal_line(target, "loop");
        assert_eq!(field(&line, "protocol"), Some("TCP"), "{line}");
    }
}

/// ztunnel's IP-mismatch rule: a stream is delivered only to the workload whose address was
/// dialed (whose certificate the TLS session presented). A CONNECT on server's session for
/// server2 — local, served by this tunnel, listening — is refused and server2 sees nothing;
/// dialing server2 itself reaches it.
#[test]
fn connect_to_another_workload_than_the_dialed_one_is_refused() {
    let Some(bed) = Bed::start("inbound_mismatch", &[]) else {
        return;
    };
    let _server = bed.server(on(addr::SERVER, SERVER_PORT));
    let server2 = bed.server(on(SERVER2, SERVER_PORT));
    let hbone = bed.dial(addr::SERVER);
    assert_eq!(hbone.server_identity(), spiffe_id("default", "server"));

    let target = on(SERVER2, SERVER_PORT);
    assert_bad_request(&hbone, target);
    let line = bed.refusal_line(target, "not_local");
    assert!(
        line.contains(&format!(
            "was sent to {}, which belongs to another workload",
            addr::SERVER
        )),
        "{line}"
    );
    assert_eq!(server2.accepted(), 0, "server2 saw the mismatched stream");
    assert_still_usable(&hbone, on(addr::SERVER, SERVER_PORT), "after the mismatch");

    // The target itself was fine: dialed as server2, the same CONNECT is delivered.
    let direct = bed.dial(SERVER2);
    assert_eq!(direct.server_identity(), spiffe_id("default", "server2"));
    assert_still_usable(&direct, target, "dialing server2 itself");
    assert_eq!(server2.accepted(), 1);
}

/// A CONNECT to an address that is not a workload this tunnel serves is refused, whatever
/// listens there: a workload of another node (10.77.1.10, with a server up on n1), n2's own
/// node address (a server up there too) and an address nobody holds.
#[test]
fn connect_to_a_non_local_or_unknown_ip_is_refused() {
    let Some(bed) = Bed::start("inbound_not_local", &[]) else {
        return;
    };
    let _server = bed.server(on(addr::SERVER, SERVER_PORT));
    let node = bed.server(on(addr::NODE2, SERVER_PORT));
    let remote = Server::start(
        bed.topo.ns("n1"),
        on(addr::CLIENT, SERVER_PORT),
        echo_handler,
    )
    .expect("starting a server on n1");
    let hbone = bed.dial(addr::SERVER);

    let unknown = Ipv4Addr::new(10, 77, 2, 99);
    for ip in [addr::CLIENT, addr::NODE2, unknown] {
        let target = on(ip, SERVER_PORT);
        assert_bad_request(&hbone, target);
        let line = bed.refusal_line(target, "not_local");
        assert!(
            line.contains("is not a workload served by this tunnel"),
            "{line}"
        );
    }
    assert_eq!(node.accepted(), 0, "n2's node address was reached");
    assert_eq!(remote.accepted(), 0, "n1's workload was reached through n2");
    assert_still_usable(&hbone, on(addr::SERVER, SERVER_PORT), "after the refusals");
}

/// A client of another trust domain is refused at the TLS handshake, even with a certificate
/// from the mesh's own root, and the tunnel logs why; so is a client of the right trust domain
/// whose certificate chains to a foreign root. The same client with a mesh certificate of the
/// right trust domain works first, so the refusals are about the certificates.
#[test]
fn a_client_of_another_trust_domain_is_refused() {
    let Some(bed) = Bed::start("inbound_trust_domain", &[]) else {
        return;
    };
    let server = bed.server(on(addr::SERVER, SERVER_PORT));
    let target = on(addr::SERVER, SERVER_PORT);
    assert_still_usable(&bed.dial(addr::SERVER), target, "a mesh client");
    assert_eq!(server.accepted(), 1);

    let foreign_domain = "spiffe://other.domain/ns/x/sa/y";
    let foreign_root = TestCa::generate("another mesh").expect("a foreign root");
    let cases = [
        (
            "same root, other trust domain",
            bed.cert(foreign_domain),
            format!(
                "client presented identity {foreign_domain}, which is not in trust domain cluster.local"
            ),
        ),
        (
            "right trust domain, foreign root",
            foreign_root
                .issue(&spiffe_id("default", "client"))
                .expect("issuing from the foreign root"),
            "invalid peer certificate: UnknownIssuer".to_string(),
        ),
    ];
    for (what, cert, reason) in cases {
        let refused = bed
            .try_dial(addr::SERVER, &cert)
            .and_then(|hbone| hbone.connect_to(target));
        match refused {
            Ok(reply) => panic!("{what}: the CONNECT was answered {}", reply.status),
            Err(RawHboneError::Timeout { what: step }) => {
                panic!("{what}: neither served nor refused ({step} timed out)")
            }
            Err(e) => eprintln!("{what}: refused as expected: {e}"),
        }
        // The refusal's log line names the reason (each case's reason is its own).
        let refusals = || bed.tunnel.access_lines(&[("flag", "tls_error")]);
        assert_eventually!(
            refusals().iter().any(|l| l.contains(&reason)),
            WAIT,
            "{what}: no tls_error line saying {reason:?}; refusals logged: {:#?}",
            refusals()
        );
    }
    assert_eq!(server.accepted(), 1, "a refused client reached the server");
}

/// A CONNECT naming the service by hostname (`hostname:port`, what waypoints and newer peers
/// send) is delivered to the dialed workload on the port its service maps the service port to;
/// a hostname or service port no service defines is refused with 400, and the connection keeps
/// serving.
#[test]
fn connect_by_service_hostname_reaches_the_dialed_workload() {
    let Some(bed) = Bed::start("inbound_hostname", &[]) else {
        return;
    };
    let _server = bed.server(on(addr::SERVER, SERVER_PORT));
    let hbone = bed.dial(addr::SERVER);

    let reply = hbone
        .connect_authority("server.default.svc.cluster.local:80")
        .expect("CONNECT by hostname answered");
    assert_eq!(reply.status, StatusCode::OK, "CONNECT by service hostname");
    let mut stream = reply.into_stream().expect("a 200 carries a stream");
    stream
        .echo(b"by hostname")
        .expect("the echo through the hostname CONNECT");

    for refused in [
        "nowhere.example.com:80",
        "server.default.svc.cluster.local:81",
    ] {
        let reply = hbone
            .connect_authority(refused)
            .unwrap_or_else(|e| panic!("CONNECT {refused}: no answer: {e}"));
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "CONNECT {refused}");
        assert!(reply.into_stream().is_none());
    }
    assert_eventually!(
        !bed.tunnel
            .access_lines(&[("flag", "unknown_hostname")])
            .is_empty(),
        WAIT,
        "no access line flags the unknown hostname"
    );
    assert_still_usable(&hbone, on(addr::SERVER, SERVER_PORT), "after the refusals");
}
