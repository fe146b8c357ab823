//! End-to-end: what a platform team reads off a running tunnel after known traffic. Two
//! shared-mode tunnels (n1: pods client, client2; n2: pod server) fed by real
//! `nodetunnel-zds-agent` processes, xDS and certificates from a real `nodetunnel-control`,
//! a DENY policy naming client2. The tests drive an exact amount of traffic and then read
//! `/metrics` (parsed as the exposition format), the access log and `/logging`; and readiness
//! with a CA that never answers.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodetunnel_testbed::inpod::{InpodMesh, InpodRules, MeshBins, PodTopology, ZdsAgentProcess};
use nodetunnel_testbed::prom::Exposition;
use nodetunnel_testbed::tunnel::{field_u64, http_get};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, port,
    set_env, shared_tunnel_env, sibling_binary, spiffe_id, Ca, ControlPlane, Match, Mesh,
    MeshConfig, Policy, Server, StringMatch, Tunnel, ZDS_AGENT_BIN,
};

const SERVER_PORT: u16 = 8080;
/// What each allowed client writes (the request) and the server answers (the response):
/// different sizes, so a swapped direction shows.
const REQUEST: usize = 3_000;
const RESPONSE: usize = 50_000;
/// Allowed connections client → server (the first held open while the gauges are read).
const ALLOWED: usize = 3;
/// Connections client2 → server, each refused by `DENY_POLICY`.
const DENIED: usize = 2;
const DENY_POLICY: &str = "default/deny-client2";
const DEADLINE: Duration = Duration::from_secs(15);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn control_bin() -> PathBuf {
    sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

/// The running mesh. Field order is drop order: tunnels and agents before the control plane,
/// everything before the topology (which holds the logs).
struct Observed {
    mesh: InpodMesh,
    _control: ControlPlane,
    topo: PodTopology,
}

fn start(test: &str) -> Option<Observed> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    cfg.policies
        .push(Policy::deny("default", "deny-client2").rule([[
            Match::default().principal(StringMatch::exact("cluster.local/ns/default/sa/client2")),
        ]]));
    let config = topo.path("mesh.yaml");
    cfg.write(&config).expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let control = topo
        .start_control_plane("n1", &control_bin(), &config, &ca, &[])
        .expect("starting the control plane");
    let zds_agent = sibling_binary(ZDS_AGENT_BIN).expect("the ZDS agent binary");
    let bins = MeshBins {
        tunnel: bin(),
        zds_agent: &zds_agent,
    };
    let mesh = InpodMesh::start(
        &topo,
        bins,
        Mesh::Control(&control),
        Ca::Control(&control),
        &[],
    )
    .expect("both tunnels ready with every pod enrolled");
    Some(Observed {
        mesh,
        _control: control,
        topo,
    })
}

impl Observed {
    fn tunnel(&self, node: &str) -> &Tunnel {
        self.mesh.tunnel(node)
    }

    /// Connects from inside pod `from` (from its address) to the server.
    fn connect(&self, from: &str) -> TcpStream {
        let pod = self.topo.pod(from);
        let ip: Ipv4Addr = pod.ip();
        let s = pod
            .ns()
            .run(move || connect_from(ip, server_addr()))
            .unwrap_or_else(|e| panic!("connecting from {from}: {e}"));
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s
    }
}

/// The server: reads the whole request (until the client's half-close), then answers
/// `RESPONSE` bytes and closes.
fn answer_after_request(mut s: TcpStream) -> io::Result<()> {
    let mut request = Vec::new();
    s.read_to_end(&mut request)?;
    s.write_all(&vec![b'r'; RESPONSE])
}

/// Sends the rest of the request on `s`, half-closes, and returns how many bytes came back.
fn finish_request(mut s: TcpStream, already_sent: usize) -> usize {
    s.write_all(&vec![b'q'; REQUEST - already_sent])
        .expect("sending the request");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("reading the response");
    back.len()
}

/// `/metrics` of `tunnel`, parsed.
fn scrape(tunnel: &Tunnel) -> Exposition {
    let (status, body) = tunnel
        .ns()
        .run(|| http_get(port::METRICS, "/metrics"))
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    Exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// The one sample of `name` with labels including `want`, or a panic showing the family.
fn single(m: &Exposition, name: &str, want: &[(&str, &str)]) -> f64 {
    m.single(name, want).unwrap_or_else(|| {
        let family: Vec<_> = m.matching(name, &[]).collect();
        panic!("not exactly one {name} with {want:?}: {family:#?}")
    })
}

/// Closed connections `reporter` (`source`/`destination`) counted on `tunnel`.
fn closed(tunnel: &Tunnel, reporter: &str) -> f64 {
    scrape(tunnel).sum(
        "istio_tcp_connections_closed_total",
        &[("reporter", reporter)],
    )
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_count_known_traffic_exactly() {
    let Some(o) = start("observe_metrics") else {
        return;
    };
    let started = now_seconds();
    let server = Server::start(
        o.topo.pod("server").ns(),
        server_addr(),
        answer_after_request,
    )
    .expect("starting the server");
    let (n1, n2) = (o.tunnel("n1"), o.tunnel("n2"));
    let client = spiffe_id("default", "client");
    let client2 = spiffe_id("default", "client2");
    let server_id = spiffe_id("default", "server");

    // One connection held open: the pool and "currently open" gauges see exactly it.
    let mut held = o.connect("client");
    held.write_all(b"q").expect("first byte");
    assert_eventually!(
        server.accepted() == 1,
        DEADLINE,
        "the server saw the connection"
    );
    let m1 = scrape(n1);
    assert_eq!(single(&m1, "nodetunnel_hbone_pool_connections", &[]), 1.0);
    assert_eq!(single(&m1, "nodetunnel_hbone_pool_streams", &[]), 1.0);
    assert_eq!(single(&m1, "nodetunnel_active_connections", &[]), 1.0);
    let m2 = scrape(n2);
    assert_eq!(
        single(&m2, "nodetunnel_hbone_inbound_connections", &[]),
        1.0
    );
    assert_eq!(single(&m2, "nodetunnel_active_connections", &[]), 1.0);
    assert_eq!(finish_request(held, 1), RESPONSE);

    for _ in 1..ALLOWED {
        assert_eq!(finish_request(o.connect("client"), 0), RESPONSE);
    }
    for i in 0..DENIED {
        let back = finish_request_denied(o.connect("client2"));
        assert_eq!(back, 0, "denied connection {i} got bytes back");
    }
    let total = (ALLOWED + DENIED) as f64;
    assert_eventually!(
        closed(n1, "source") == total,
        DEADLINE,
        "n1 closed {}",
        closed(n1, "source")
    );
    assert_eventually!(
        closed(n2, "destination") == total,
        DEADLINE,
        "n2 closed {}",
        closed(n2, "destination")
    );
    assert_eq!(
        server.accepted(),
        ALLOWED,
        "no denied connection reached the app"
    );

    let (request, response) = ((ALLOWED * REQUEST) as f64, (ALLOWED * RESPONSE) as f64);
    let allowed = ALLOWED as f64;
    let denied = DENIED as f64;

    // n1, the client side (reporter=source).
    let m1 = scrape(n1);
    let from = |w: &'static str| [("reporter", "source"), ("source_workload", w)];
    assert_eq!(
        m1.sum("istio_tcp_connections_opened_total", &from("client")),
        allowed
    );
    assert_eq!(
        m1.sum("istio_tcp_connections_opened_total", &from("client2")),
        denied
    );
    let ok = [("source_workload", "client"), ("response_flags", "-")];
    assert_eq!(m1.sum("istio_tcp_connections_closed_total", &ok), allowed);
    assert_eq!(
        m1.sum("istio_tcp_connections_failed_total", &from("client2")),
        denied
    );
    // Istio's directions: received = the request, sent = the response.
    assert_eq!(
        m1.sum("istio_tcp_received_bytes_total", &from("client")),
        request
    );
    assert_eq!(
        m1.sum("istio_tcp_sent_bytes_total", &from("client")),
        response
    );
    let outbound = |outcome, flag| {
        [
            ("direction", "outbound"),
            ("protocol", "HBONE"),
            ("outcome", outcome),
            ("flag", flag),
        ]
    };
    assert_eq!(
        single(
            &m1,
            "nodetunnel_connections_total",
            &outbound("completed", "-")
        ),
        allowed
    );
    assert_eq!(
        single(
            &m1,
            "nodetunnel_connections_total",
            &outbound("failed", "peer_refused")
        ),
        denied
    );
    assert_eq!(
        m1.sum("nodetunnel_connections_total", &[]),
        total,
        "nothing else"
    );
    // One pooled connection per source identity, no stream left open.
    assert_eq!(single(&m1, "nodetunnel_hbone_pool_connections", &[]), 2.0);
    assert_eq!(single(&m1, "nodetunnel_hbone_pool_streams", &[]), 0.0);
    assert_eq!(
        single(&m1, "nodetunnel_hbone_connections_opened_total", &[]),
        2.0
    );
    assert_eq!(single(&m1, "nodetunnel_active_connections", &[]), 0.0);

    // n2, the server side (reporter=destination).
    let m2 = scrape(n2);
    let to = |principal| {
        [
            ("reporter", "destination"),
            ("source_principal", principal),
            ("destination_workload", "server"),
        ]
    };
    let (from_client, from_client2) = (to(client.as_str()), to(client2.as_str()));
    assert_eq!(
        m2.sum("istio_tcp_connections_opened_total", &from_client),
        allowed
    );
    assert_eq!(
        m2.sum("istio_tcp_connections_opened_total", &from_client2),
        denied
    );
    assert_eq!(
        m2.sum("istio_tcp_received_bytes_total", &from_client),
        request
    );
    assert_eq!(m2.sum("istio_tcp_sent_bytes_total", &from_client), response);
    assert_eq!(
        m2.sum(
            "istio_tcp_connections_closed_total",
            &[
                ("source_principal", client2.as_str()),
                ("response_flags", "DENY")
            ]
        ),
        denied
    );
    assert_eq!(
        single(
            &m2,
            "nodetunnel_policy_denials_total",
            &[
                ("policy", DENY_POLICY),
                ("reason", "deny_policy"),
                ("destination_workload", "server"),
                ("protocol", "HBONE"),
            ]
        ),
        denied
    );
    let inbound = |outcome, flag| {
        [
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("outcome", outcome),
            ("flag", flag),
        ]
    };
    assert_eq!(
        single(
            &m2,
            "nodetunnel_connections_total",
            &inbound("completed", "-")
        ),
        allowed
    );
    assert_eq!(
        single(
            &m2,
            "nodetunnel_connections_total",
            &inbound("denied", "policy_denied")
        ),
        denied
    );
    assert_eq!(
        m2.sum("nodetunnel_connections_total", &[]),
        total,
        "nothing else"
    );
    // n1's two pooled connections are still up.
    assert_eq!(
        single(&m2, "nodetunnel_hbone_inbound_connections", &[]),
        2.0
    );
    assert_eq!(
        single(&m2, "nodetunnel_hbone_connections_accepted_total", &[]),
        2.0
    );

    // Pods, node agent, certificates, xDS, build, process: on both tunnels.
    for (node, m, pods, identities) in [
        ("n1", &m1, 2.0, vec![client.as_str(), client2.as_str()]),
        ("n2", &m2, 1.0, vec![server_id.as_str()]),
    ] {
        assert_eq!(
            single(m, "workload_manager_active_proxy_count", &[]),
            pods,
            "{node}"
        );
        assert_eq!(
            single(m, "workload_manager_proxies_started_total", &[]),
            pods,
            "{node}"
        );
        assert_eq!(
            single(m, "workload_manager_proxies_stopped_total", &[]),
            0.0,
            "{node}"
        );
        assert_eq!(single(m, "nodetunnel_zds_connected", &[]), 1.0, "{node}");
        assert_eq!(
            single(m, "nodetunnel_zds_connects_total", &[]),
            1.0,
            "{node}"
        );
        for id in &identities {
            let left = single(
                m,
                "nodetunnel_certificate_expiry_seconds",
                &[("identity", id)],
            );
            assert!(left > 0.0, "{node}: {id} expires in {left}s");
        }
        assert_eq!(
            m.matching("nodetunnel_certificate_expiry_seconds", &[])
                .count(),
            identities.len(),
            "{node}: only the pods' identities"
        );
        assert_eq!(
            single(m, "nodetunnel_certificates", &[("state", "available")]),
            identities.len() as f64,
            "{node}"
        );
        assert_eq!(single(m, "nodetunnel_xds_connected", &[]), 1.0, "{node}");
        let address = [("url", "type.googleapis.com/istio.workload.Address")];
        let authz = [("url", "type.googleapis.com/istio.security.Authorization")];
        // 3 workloads + 1 service; 1 policy.
        assert_eq!(
            single(m, "nodetunnel_xds_resources", &address),
            4.0,
            "{node}"
        );
        assert_eq!(single(m, "nodetunnel_xds_resources", &authz), 1.0, "{node}");
        for url in [&address, &authz] {
            let acked = single(m, "nodetunnel_xds_last_ack_timestamp_seconds", url);
            assert!(
                acked > started - 60.0 && acked <= now_seconds(),
                "{node}: {acked}"
            );
            assert_eq!(single(m, "nodetunnel_xds_nacks_total", url), 0.0, "{node}");
        }
        assert_eq!(
            m.matching("nodetunnel_xds_last_nack_timestamp_seconds", &[])
                .count(),
            0,
            "{node}: never NACKed"
        );
        assert_eq!(
            single(m, "istio_build", &[("component", "ztunnel")]),
            1.0,
            "{node}"
        );
        assert_eq!(single(m, "nodetunnel_build_info", &[]), 1.0, "{node}");
        assert!(
            single(m, "process_resident_memory_bytes", &[]) > 0.0,
            "{node}"
        );
        let fds = single(m, "process_open_fds", &[]);
        assert!(
            fds > 0.0 && fds <= single(m, "process_max_fds", &[]),
            "{node}: {fds}"
        );
        assert!(single(m, "process_cpu_seconds_total", &[]) > 0.0, "{node}");
        let began = single(m, "process_start_time_seconds", &[]);
        assert!(
            began > started - 120.0 && began <= now_seconds(),
            "{node}: {began}"
        );
        assert_eq!(m.types["process_cpu_seconds"], "counter", "{node}");
    }

    // The access log: one line per connection when it closed, both workloads and identities,
    // bytes each way from the served workload's side, duration, outcome and reason.
    let complete_in = n2.access_lines(&[
        ("direction", "inbound"),
        ("src.identity", &client),
        ("dst.identity", &server_id),
        ("src.workload", "client"),
        ("dst.workload", "server"),
    ]);
    let complete_in: Vec<_> = complete_in
        .iter()
        .filter(|l| l.contains("connection complete"))
        .collect();
    assert_eq!(complete_in.len(), ALLOWED, "{complete_in:#?}");
    for line in &complete_in {
        assert_eq!(
            field_u64(line, "bytes_sent"),
            Some(RESPONSE as u64),
            "{line}"
        );
        assert_eq!(
            field_u64(line, "bytes_recv"),
            Some(REQUEST as u64),
            "{line}"
        );
        let duration = nodetunnel_testbed::tunnel::field(line, "duration");
        assert!(duration.is_some_and(|d| d.ends_with("ms")), "{line}");
    }
    let complete_out: Vec<_> = n1
        .access_lines(&[("direction", "outbound"), ("src.identity", &client)])
        .into_iter()
        .filter(|l| l.contains("connection complete"))
        .collect();
    assert_eq!(complete_out.len(), ALLOWED, "{complete_out:#?}");
    for line in &complete_out {
        assert_eq!(
            field_u64(line, "bytes_sent"),
            Some(REQUEST as u64),
            "{line}"
        );
        assert_eq!(
            field_u64(line, "bytes_recv"),
            Some(RESPONSE as u64),
            "{line}"
        );
    }
    let denials = n2.access_lines(&[
        ("direction", "inbound"),
        ("flag", "policy_denied"),
        ("src.identity", &client2),
    ]);
    assert_eq!(denials.len(), DENIED, "{denials:#?}");
    for line in &denials {
        assert!(
            line.contains(DENY_POLICY),
            "the reason names the policy: {line}"
        );
    }
}

/// A denied connection: sends a little, half-closes, returns how many bytes came back (the
/// tunnel closes or resets it; a reset counts as nothing back).
fn finish_request_denied(mut s: TcpStream) -> usize {
    let _ = s.write_all(b"must not arrive");
    let _ = s.shutdown(Shutdown::Write);
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => back.len(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => back.len(),
        Err(e) => panic!("reading from a denied connection: {e}"),
    }
}

/// `<method> <path>` on the admin port of `tunnel`: status and body.
fn admin(tunnel: &Tunnel, method: &str, path: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tunnel
        .ns()
        .run(move || -> io::Result<(u16, String)> {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port::ADMIN))?;
            s.set_read_timeout(Some(DEADLINE))?;
            s.write_all(request.as_bytes())?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let status = raw
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("not HTTP: {raw:.80}")))?;
            let body = raw
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            Ok((status, body))
        })
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Outbound "connection complete" lines of client on n1.
fn completions(tunnel: &Tunnel) -> usize {
    tunnel
        .access_lines(&[("direction", "outbound"), ("src.workload", "client")])
        .iter()
        .filter(|l| l.contains("connection complete"))
        .count()
}

#[test]
fn logging_changes_the_filter_at_runtime_and_refuses_bad_values() {
    let Some(o) = start("observe_logging") else {
        return;
    };
    let _server = Server::start(
        o.topo.pod("server").ns(),
        server_addr(),
        answer_after_request,
    )
    .expect("starting the server");
    let n1 = o.tunnel("n1");
    // One allowed connection, then wait until n1 counted it closed: its access line (or
    // its absence) is settled by then, since the line is written before the count.
    let mut done = 0.0;
    let mut one_connection = || {
        assert_eq!(finish_request(o.connect("client"), 0), RESPONSE);
        done += 1.0;
        let want = done;
        assert_eventually!(
            closed(n1, "source") == want,
            DEADLINE,
            "n1 closed {}",
            closed(n1, "source")
        );
    };

    assert_eq!(
        admin(n1, "GET", "/logging"),
        (200, "current log level is info\n".into())
    );
    one_connection();
    assert_eq!(completions(n1), 1);

    // Silence the access log's info lines: the next connection leaves none.
    assert_eq!(
        admin(n1, "POST", "/logging?level=access=warn"),
        (200, "current log level is access=warn,info\n".into())
    );
    one_connection();
    assert_eq!(
        completions(n1),
        1,
        "access=warn still wrote an info access line"
    );

    // Refused values change nothing, and say why.
    let (status, body) = admin(n1, "POST", "/logging?level=verbose");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"verbose\" is not a level"), "{body}");
    let (status, body) = admin(n1, "POST", "/logging?level=access=loud");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"access=loud\" is not a valid target=level clause"),
        "{body}"
    );
    let (status, body) = admin(n1, "GET", "/logging?level=debug");
    assert_eq!(status, 405, "a GET never changes the filter: {body}");
    assert_eq!(
        admin(n1, "GET", "/logging"),
        (200, "current log level is access=warn,info\n".into())
    );

    // Reset: back to RUST_LOG's filter, access lines again.
    assert_eq!(
        admin(n1, "POST", "/logging?reset"),
        (200, "current log level is info\n".into())
    );
    one_connection();
    assert_eq!(completions(n1), 2);

    // debug everywhere: the pool's debug line for a new HBONE connection (client2's identity
    // needs its own) shows up.
    assert_eq!(
        admin(n1, "POST", "/logging?level=debug"),
        (200, "current log level is debug\n".into())
    );
    assert!(
        !n1.log().contains("opened HBONE connection"),
        "debug before the change"
    );
    let denied = finish_request_denied(o.connect("client2"));
    assert_eq!(denied, 0);
    assert_eventually!(
        n1.log().contains("opened HBONE connection"),
        DEADLINE,
        "no debug line after level=debug:\n{}",
        n1.log_tail(20)
    );
}

/// Shared mode is ready only while every running pod has its certificate: with a CA nobody
/// answers, n1's tunnel is ready with no pods (xDS synced, the agent's empty snapshot applied)
/// and not ready, naming the pod and its identity, once a pod is enrolled.
#[test]
fn readiness_waits_for_the_certificate_of_every_enrolled_pod() {
    let test = "observe_ready";
    if !namespaces_available(test) {
        return;
    }
    let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
    let config = topo.path("mesh.yaml");
    MeshConfig::standard(SERVER_PORT)
        .write(&config)
        .expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let control = topo
        .start_control_plane("n1", &control_bin(), &config, &ca, &[])
        .expect("starting the control plane");
    let socket = topo.path("n1-zds.sock");
    let agent = ZdsAgentProcess::spawn(
        topo.node_ns("n1"),
        &sibling_binary(ZDS_AGENT_BIN).expect("the ZDS agent binary"),
        &socket,
        &topo.path("n1-zds-agent.log"),
    )
    .expect("starting the ZDS agent");
    let mut env = shared_tunnel_env(
        "n1",
        Mesh::Control(&control),
        Ca::Control(&control),
        &socket,
    );
    // Nothing listens there: every issuance fails.
    set_env(&mut env, "CA_ADDRESS", "https://127.0.0.1:9");
    let tunnel = topo
        .spawn_tunnel("n1", bin(), &env_refs(&env))
        .expect("starting the tunnel");
    agent
        .wait_line(0, DEADLINE, |l| l.starts_with("snapshot sent:"))
        .expect("the agent's empty snapshot");
    assert_eventually!(
        tunnel
            .readiness_answer()
            .is_ok_and(|(status, _)| status == 200),
        DEADLINE,
        "no pods, so no certificate to wait for: {:?}\n{}",
        tunnel.readiness_answer(),
        tunnel.log_tail(20)
    );
    agent.add(topo.pod("client")).expect("enrolling client");
    let want = format!(
        "not ready: waiting for the certificate of {} (pod default/client): ",
        spiffe_id("default", "client")
    );
    assert_eventually!(
        tunnel
            .readiness_answer()
            .is_ok_and(|(status, body)| status == 503 && body.starts_with(&want)),
        DEADLINE,
        "{:?}",
        tunnel.readiness_answer()
    );
    // Removing the pod removes the wait.
    agent.del("uid-client").expect("removing client");
    assert_eventually!(
        tunnel
            .readiness_answer()
            .is_ok_and(|(status, _)| status == 200),
        DEADLINE,
        "{:?}",
        tunnel.readiness_answer()
    );
    drop(tunnel);
    drop(agent);
}
