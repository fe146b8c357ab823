//! Faults survived, with traffic flowing: real `nodetunnel` and `nodetunnel-control` processes
//! in network namespaces, and a part of the mesh taken away under them.
//!
//! - **Control plane down** (dedicated mode, tests/control.rs's topology): existing and new
//!   connections keep working on the last good state; a change made meanwhile arrives once it
//!   is back, and the control plane's own per-stream counters show that the resync carried
//!   only that change (delta xDS: the tunnel resumes with `initial_resource_versions`).
//! - **CA down**: certificates keep serving until they expire while renewal retries with a
//!   capped, jittered exponential backoff and logs why; once expired, new connections are
//!   refused before anything is dialed (`flag=cert_error`), never made with the expired
//!   certificate nor on an HBONE connection it authenticated; the CA comes back → renewal →
//!   traffic.
//!
//! Topology: n1 10.77.1.1 (client 10.77.1.10, client2 10.77.1.11) and n2 10.77.2.1 (server
//! 10.77.2.10:8080, echo); the control plane runs in n1 on 10.77.1.1:15012.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodetunnel_testbed::traffic::continuous::{ContinuousTraffic, TrafficSpec};
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, set_env,
    spiffe_id, tunnel_env, Ca, Capture, ControlPlane, Mesh, MeshConfig, Server, Topology, Tunnel,
    Workload,
};
use serde_json::Value;

const SERVER_PORT: u16 = 8080;
/// Waiting for syncs, reconnects and traffic progress is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

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

fn start_tunnel(topo: &Topology, node: &str, env: &[(String, String)]) -> Tunnel {
    topo.start_tunnel(node, bin(), &env_refs(env))
        .unwrap_or_else(|e| panic!("starting the tunnel on {node}: {e}"))
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

fn connect(topo: &Topology, src: std::net::Ipv4Addr) -> std::io::Result<TcpStream> {
    let dst = server_addr();
    topo.ns("n1").run(move || connect_from(src, dst))
}

/// One new connection from `src` to the server, echoing `msg`.
fn echo_once(topo: &Topology, src: std::net::Ipv4Addr, msg: &[u8]) -> std::io::Result<()> {
    let mut s = connect(topo, src)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    echo_roundtrip(&mut s, msg)
}

/// Short connections one after another and one long stream, from client (n1) to the server.
fn traffic(topo: &Topology, short_loops: usize) -> ContinuousTraffic {
    ContinuousTraffic::start(&TrafficSpec {
        ns: topo.ns("n1").clone(),
        src: addr::CLIENT,
        dst: server_addr(),
        short_loops,
        long_streams: 1,
    })
    .expect("starting the traffic")
}

/// Waits until `n` more short connections succeeded and the long stream moved more data.
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

/// Stops the traffic and asserts nothing failed and every long stream verified bytes.
fn assert_clean(traffic: ContinuousTraffic, what: &str) {
    let report = traffic.stop();
    println!("{what}: {report}");
    assert!(
        report.failures.is_empty(),
        "{what}: failures: {:#?}",
        report.failures
    );
    assert!(
        report
            .long
            .iter()
            .all(|l| l.error.is_none() && l.verified > 0),
        "{what}: {:?}",
        report.long
    );
}

/// What the control plane sent on `node`'s current stream, summed over every resource type:
/// (resources, removals), with the per-type view for messages.
fn sent_on_stream(cp: &ControlPlane, node: &str) -> (u64, u64, Value) {
    let connections: Value =
        serde_json::from_str(&cp.status("/debug/connections").expect("status")).unwrap();
    let needle = format!("nodetunnel-{node}.");
    let stream = connections["connections"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["node_id"].as_str().is_some_and(|id| id.contains(&needle)))
        })
        .unwrap_or_else(|| panic!("no stream from {node}: {connections}"))
        .clone();
    let types = stream["types"].as_object().cloned().unwrap_or_default();
    let sum = |key: &str| types.values().filter_map(|t| t[key].as_u64()).sum::<u64>();
    (
        sum("resources_sent"),
        sum("removals_sent"),
        stream["types"].clone(),
    )
}

// ------------------------------------------------------------------------------ control plane

/// The control plane is killed and stays away while short connections keep opening and a long
/// stream keeps flowing (hundreds of new connections, far longer than its 100 ms push
/// debounce), a new identity connects for the first time, and the mesh changes (a workload
/// added, one removed). Back at the same address, it gets from each tunnel the versions it
/// holds and sends exactly the two differences; the tunnels apply them on a new stream.
#[test]
fn control_plane_down_serves_the_last_state_and_the_resync_sends_only_differences() {
    let Some(topo) = topology("faults_xds") else {
        return;
    };
    let mut cfg = MeshConfig::standard(SERVER_PORT);
    let (mesh, ca) = mesh_files(&topo, &cfg);
    let mut cp = topo
        .start_control_plane("n1", &control_bin(), &mesh, &ca, &[])
        .expect("starting the control plane");
    let t2 = start_tunnel(
        &topo,
        "n2",
        &tunnel_env("n2", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let t1 = start_tunnel(
        &topo,
        "n1",
        &tunnel_env("n1", Mesh::Control(&cp), Ca::Control(&cp)),
    );
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    let traffic = traffic(&topo, 1);
    wait_progress(&traffic, 50, "before the control plane went away");
    let full = (cfg.workloads.len() + cfg.services.len()) as u64;
    for node in ["n1", "n2"] {
        let (sent, removed, types) = sent_on_stream(&cp, node);
        assert_eq!((sent, removed), (full, 0), "{node}'s first stream: {types}");
    }

    cp.kill();
    for (node, t) in [("n1", &t1), ("n2", &t2)] {
        assert_eventually!(
            config_dump(t)["xds"]["connected"] == false,
            WAIT,
            "{node} did not notice the control plane went away"
        );
    }
    wait_progress(&traffic, 200, "while the control plane is down");
    echo_once(
        &topo,
        addr::CLIENT2,
        b"a first connection of client2, control plane down",
    )
    .expect("a new identity's first connection while the control plane is down");
    assert!(
        t1.is_ready() && t2.is_ready(),
        "the last good state keeps the tunnels ready"
    );

    // The mesh changes while nobody serves it: one workload added, one removed.
    let late = Workload::new("late", addr::NON_MESH, "n2");
    let client2 = cfg.workload_mut("client2").uid();
    cfg = cfg.with_workload(late.clone());
    cfg.workloads.retain(|w| w.name != "client2");
    cfg.write(&mesh).unwrap();
    wait_progress(&traffic, 100, "after the mesh changed, control plane down");

    cp.restart().expect("restarting the control plane");
    for (node, t) in [("n1", &t1), ("n2", &t2)] {
        assert_eventually!(
            {
                let uids = workload_uids(&config_dump(t));
                uids.contains(&late.uid()) && !uids.contains(&client2)
            },
            WAIT,
            "{node} never applied the change made while the control plane was down: {}",
            config_dump(t)["xds"]
        );
        let dump = config_dump(t);
        assert_eq!(workload_uids(&dump).len(), cfg.workloads.len(), "{dump}");
        assert!(
            dump["xds"]["connects"].as_u64().unwrap_or(0) >= 2,
            "{node}: expected a second stream: {}",
            dump["xds"]
        );
        // Only the differences crossed the new stream: `late`, and `client2`'s removal.
        let (sent, removed, types) = sent_on_stream(&cp, node);
        println!("{node}: resync after the restart sent {sent} resources and {removed} removals (the first stream: {full})");
        assert_eq!(
            (sent, removed),
            (1, 1),
            "{node}'s resync must carry only the differences: {types}"
        );
    }
    wait_progress(&traffic, 100, "after the resync");
    assert_clean(traffic, "control plane down and back");
}

// ----------------------------------------------------------------------------------------- CA

/// Certificate lifetime asked of the CA (`SECRET_TTL`): renewed at half-life, so when the CA
/// goes away each certificate has between 4 s and 8 s left.
const CERT_TTL: &str = "8s";
/// A connection made "while the certificate is valid" starts at least this long before expiry.
const VALID_MARGIN: Duration = Duration::from_secs(1);
/// First and last backoff delay of certificate issuance (src/identity/manager.rs).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// `2024-05-01T12:00:00Z` (what `/config_dump` shows) as a time.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// When `identity`'s certificate (as `tunnel` holds it now) expires.
fn cert_expiry(tunnel: &Tunnel, identity: &str) -> SystemTime {
    let dump = config_dump(tunnel);
    let cert = dump["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["identity"] == identity))
        .unwrap_or_else(|| panic!("no certificate for {identity}: {}", dump["certificates"]));
    cert["certChain"][0]["expirationTime"]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap_or_else(|| panic!("no expiry for {identity}: {cert}"))
}

/// `409.1ms`, `1.6s`, `3µs` (a `Duration`'s debug form) as a duration.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// The `retry_in` of every failed issuance `tunnel` logged for `identity`, in order.
fn issuance_retries(tunnel: &Tunnel, identity: &str) -> Vec<Duration> {
    tunnel
        .log()
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains("certificate")
                && field(l, "identity") == Some(identity)
        })
        .filter_map(|l| field(l, "retry_in").and_then(parse_debug_duration))
        .collect()
}

/// The CA (the control plane; the mesh comes from a file) goes away. Certificates keep
/// serving new connections until they expire, a long stream keeps flowing, and each failed
/// renewal is logged with its cause and a delay that doubles (±50%, capped). Once the
/// certificates expired a new connection is refused by the client's tunnel with
/// `flag=cert_error` — neither handshaken with the expired certificate nor sent over the
/// pooled HBONE connection it authenticated. The CA returns: renewal, and traffic flows.
#[test]
fn ca_down_certificates_serve_until_expiry_then_are_never_used_past_it() {
    let Some(topo) = topology("faults_ca") else {
        return;
    };
    let (mesh, ca) = mesh_files(&topo, &MeshConfig::standard(SERVER_PORT));
    let mut cp = topo
        .start_control_plane("n1", &control_bin(), &mesh, &ca, &[])
        .expect("starting the control plane");
    let env = |node: &str| {
        let mut env = tunnel_env(node, Mesh::File(&mesh), Ca::Control(&cp));
        set_env(&mut env, "SECRET_TTL", CERT_TTL);
        env
    };
    let t2 = start_tunnel(&topo, "n2", &env("n2"));
    let t1 = start_tunnel(&topo, "n1", &env("n1"));
    let _server = Server::start(topo.ns("n2"), server_addr(), echo_handler).unwrap();
    // The long stream holds n1's pooled HBONE connection to n2 open through the whole test.
    let long = traffic(&topo, 0);
    echo_once(&topo, addr::CLIENT, b"CA up").expect("a connection with the CA up");
    let (client_id, server_id) = (
        spiffe_id("default", "client"),
        spiffe_id("default", "server"),
    );

    cp.kill();
    let expiry = cert_expiry(&t1, &client_id).min(cert_expiry(&t2, &server_id));
    assert!(
        SystemTime::now() + VALID_MARGIN < expiry,
        "the certificates should have half their {CERT_TTL} left when the CA goes away"
    );
    echo_once(&topo, addr::CLIENT, b"CA down, certificates valid")
        .expect("a new connection while the certificates are valid");
    // Renewal keeps failing until the certificates expire (waiting, not asserting speed).
    let now = SystemTime::now();
    std::thread::sleep(expiry.duration_since(now).unwrap_or_default() + Duration::from_secs(1));

    // Past expiry: n1 refuses before dialing, with the reason, every time it is asked.
    let before = t1.access_lines(&[("flag", "cert_error")]).len();
    for i in 0..3 {
        let result = echo_once(&topo, addr::CLIENT, b"certificates expired");
        assert!(
            result.is_err(),
            "connection {i} after expiry went through: an expired certificate (or a \
             connection it authenticated) was used"
        );
    }
    assert_eventually!(
        t1.access_lines(&[("flag", "cert_error")]).len() >= before + 3,
        WAIT,
        "n1 did not refuse with flag=cert_error:\n{}",
        t1.log_tail(20)
    );
    let refusal = t1
        .access_lines(&[("flag", "cert_error")])
        .pop()
        .expect("a refusal");
    println!("refusal after expiry: {refusal}");
    assert!(
        refusal.contains(&client_id) && refusal.contains("certificate"),
        "the refusal names the identity and the certificate: {refusal}"
    );
    assert!(
        refusal.contains(&format!("cannot reach the CA at {}", cp.url())),
        "the refusal names the unreachable CA: {refusal}"
    );
    // The next (backed-off) renewal attempt says that nothing valid is left.
    assert_eventually!(
        t1.log().contains("no valid certificate is left"),
        BACKOFF_MAX,
        "no error once the certificate is gone:\n{}",
        t1.log_tail(20)
    );

    // Renewal backed off: the k-th consecutive failure waits about 200 ms × 2^k (±50%), never
    // over 30 s, and the delays are jittered (not exactly the base).
    let retries = issuance_retries(&t1, &client_id);
    println!("n1 issuance retries for {client_id}: {retries:?}");
    assert!(
        retries.len() >= 4,
        "too few failed renewals logged: {retries:?}"
    );
    let mut jittered = false;
    for (k, delay) in retries.iter().enumerate() {
        let base = BACKOFF_MIN.saturating_mul(1 << k.min(20)).min(BACKOFF_MAX);
        assert!(
            *delay >= base / 2 && *delay <= BACKOFF_MAX,
            "failure {k} waited {delay:?}, expected {:?}..={:?}: {retries:?}",
            base / 2,
            base.mul_f64(1.5).min(BACKOFF_MAX)
        );
        jittered |= delay.abs_diff(base) > base / 100;
    }
    assert!(jittered, "no delay is jittered: {retries:?}");

    cp.restart().expect("restarting the CA");
    assert_eventually!(
        echo_once(&topo, addr::CLIENT, b"CA back").is_ok(),
        Duration::from_secs(60),
        "no traffic after the CA came back:\n{}",
        t1.log_tail(20)
    );
    assert!(
        cert_expiry(&t1, &client_id) > SystemTime::now(),
        "n1 renewed its certificate"
    );
    // The long stream's session was established before the outage; it carried on.
    assert_clean(long, "CA down, expiry, CA back");
}

// --------------------------------------------------------------------------------------- load

/// Connections held open together through both tunnels.
const LOAD_CONNECTIONS: usize = 10_000;
/// Bytes each connection sends (and gets echoed) in each of its two rounds.
const LOAD_CHUNK: usize = 1024;
/// Waiting for the whole load (connecting, echoing, closing) is bounded by this: a debug
/// build on two cores, shared with other tests.
const LOAD_WAIT: Duration = Duration::from_secs(600);
/// Open files the test process needs for the client ends, plus margin; the server ends live
/// in the echo server's process (`nodetunnel-echo`), the tunnels' in theirs (both inherit the
/// raised soft limit).
const LOAD_NOFILE: u64 = LOAD_CONNECTIONS as u64 + 2048;

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, and checks that this is at
/// least `n` (a container may not allow raising the hard limit itself).
fn raise_nofile(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    assert!(ok, "getrlimit: {}", std::io::Error::last_os_error());
    assert!(
        limit.rlim_max >= n,
        "RLIMIT_NOFILE's hard limit is {}, the load needs {n}",
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    assert!(
        ok,
        "raising RLIMIT_NOFILE: {}",
        std::io::Error::last_os_error()
    );
}

/// `nodetunnel-echo` in `ns` on `addr`, once it listens.
fn start_echo_process(
    ns: &nodetunnel_testbed::Netns,
    addr: SocketAddr,
    log: &Path,
) -> nodetunnel_testbed::process::NsProcess {
    let bin = nodetunnel_testbed::sibling_binary("nodetunnel-echo").expect("the echo binary");
    let p = nodetunnel_testbed::process::NsProcess::spawn(
        "echo server",
        ns,
        &bin,
        &[addr.to_string()],
        &[],
        log,
    )
    .expect("starting nodetunnel-echo");
    assert_eventually!(
        p.log().contains("listening"),
        WAIT,
        "nodetunnel-echo never listened: {}",
        p.log()
    );
    p
}

/// One held connection: round 1 (a chunk out, its echo back, checked), then waits for
/// `release`, then round 2 (another chunk, half-close, everything until EOF, checked).
async fn load_client(
    i: usize,
    stream: std::net::TcpStream,
    echoed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    mut release: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    use nodetunnel_testbed::traffic::Pattern;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |what: &str, e: std::io::Error| format!("connection {i}: {what}: {e}");
    let mut stream = tokio::net::TcpStream::from_std(stream).map_err(|e| fail("tokio", e))?;
    let sent = Pattern::new(i as u64).bytes(2 * LOAD_CHUNK);
    stream
        .write_all(&sent[..LOAD_CHUNK])
        .await
        .map_err(|e| fail("round 1 write", e))?;
    let mut back = vec![0u8; LOAD_CHUNK];
    stream
        .read_exact(&mut back)
        .await
        .map_err(|e| fail("round 1 read", e))?;
    if back != sent[..LOAD_CHUNK] {
        return Err(format!("connection {i}: round 1 echo differs"));
    }
    echoed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    release
        .wait_for(|go| *go)
        .await
        .map_err(|_| format!("connection {i}: released by nobody"))?;
    stream
        .write_all(&sent[LOAD_CHUNK..])
        .await
        .map_err(|e| fail("round 2 write", e))?;
    stream.shutdown().await.map_err(|e| fail("half-close", e))?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .await
        .map_err(|e| fail("round 2 read", e))?;
    if rest != sent[LOAD_CHUNK..] {
        return Err(format!(
            "connection {i}: round 2 got {} bytes, not the {LOAD_CHUNK} sent (or different ones)",
            rest.len()
        ));
    }
    Ok(())
}

/// 10,000 connections from the client pod to the server pod, through both shared-mode tunnels
/// (n1 outbound → HBONE → n2 inbound), all open at once: each echoes a first chunk, and only
/// when every one has, the tunnels' RSS is read (growth per held connection printed), then
/// every connection sends a second chunk, half-closes and must get exactly its bytes back.
#[test]
fn ten_thousand_concurrent_connections_through_the_tunnels_finish_byte_exact() {
    use nodetunnel_testbed::{InpodMesh, InpodRules, MeshBins, PodTopology, ZDS_AGENT_BIN};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    if !namespaces_available("faults_load") {
        return;
    }
    raise_nofile(LOAD_NOFILE);
    let topo = PodTopology::two_node("faults_load", InpodRules::Apply).expect("the topology");
    let config = topo.path("mesh.yaml");
    MeshConfig::standard(SERVER_PORT)
        .write(&config)
        .expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let zds_agent = nodetunnel_testbed::sibling_binary(ZDS_AGENT_BIN).expect("the ZDS agent");
    let bins = MeshBins {
        tunnel: bin(),
        zds_agent: &zds_agent,
    };
    let mesh = InpodMesh::start(&topo, bins, Mesh::File(&config), Ca::Dir(&ca), &[])
        .expect("the in-pod mesh");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server_pod = topo.pod("server");
    let dst: SocketAddr = (server_pod.ip(), SERVER_PORT).into();
    let echo = start_echo_process(server_pod.ns(), dst, &topo.path("echo.log"));
    let client = topo.pod("client");
    let (client_ns, src) = (client.ns().clone(), client.ip());

    // Baseline: the mesh warmed up by one connection (certificates, the HBONE pool).
    let warm = client_ns.run(move || {
        let mut s = connect_from(src, dst)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        echo_roundtrip(&mut s, b"warm-up")
    });
    warm.expect("a warm-up connection through both tunnels");
    let stats = |node: &str| {
        mesh.tunnel(node)
            .stats()
            .unwrap_or_else(|e| panic!("{node} tunnel stats: {e}"))
    };
    let before = [stats("n1"), stats("n2")];

    // Connect every client (the tunnel's listener in the client pod completes each at once),
    // then run them all together.
    let streams = client_ns
        .run(move || {
            (0..LOAD_CONNECTIONS)
                .map(|_| {
                    let s = connect_from(src, dst)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("opening the connections");
    let echoed = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = {
        let _guard = rt.enter();
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let client = load_client(i, s, echoed.clone(), released.clone());
                rt.spawn(tokio::time::timeout(LOAD_WAIT, client))
            })
            .collect()
    };
    assert_eventually!(
        echoed.load(Ordering::Relaxed) == LOAD_CONNECTIONS || tasks.iter().any(|t| t.is_finished()),
        LOAD_WAIT,
        "only {} of {LOAD_CONNECTIONS} connections echoed their first chunk",
        echoed.load(Ordering::Relaxed)
    );
    let held = echoed.load(Ordering::Relaxed);
    let during = [stats("n1"), stats("n2")];
    for (node, (b, d)) in ["n1", "n2"].iter().zip(before.iter().zip(&during)) {
        let per = (d.rss_kib.saturating_sub(b.rss_kib)) as f64 / held.max(1) as f64;
        println!(
            "{node} tunnel: {held} connections held, RSS {} → {} KiB ({per:.1} KiB per \
             connection), fds {} → {}, threads {}",
            b.rss_kib, d.rss_kib, b.fds, d.fds, d.threads
        );
    }
    release.send(true).expect("releasing the clients");
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(match t.await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(format!("a connection outlived {LOAD_WAIT:?}")),
                Err(e) => Err(format!("a client task failed: {e}")),
            });
        }
        out
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let ok = results.len() - failures.len();
    println!(
        "{ok} of {LOAD_CONNECTIONS} connections finished byte-exact ({} bytes each way each)",
        2 * LOAD_CHUNK,
    );
    assert_eq!(
        held, LOAD_CONNECTIONS,
        "not every connection was held at once"
    );
    assert!(
        failures.is_empty(),
        "{} failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ok, LOAD_CONNECTIONS);
    // Every load connection reached the server pod's process (after the warm-up one).
    assert!(
        echo.log().contains(&format!("accepted {LOAD_CONNECTIONS}")),
        "the echo server saw fewer connections: {}",
        echo.log()
    );
    drop(rt);
    drop(echo);
    drop(mesh);
}
