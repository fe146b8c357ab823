//! `nodetunnel-demo`: two nodes, two tunnels, three kinds of traffic, told as a story.
//!
//! ```text
//! cargo build --release && sudo ./target/release/nodetunnel-demo
//! ```
//!
//! Finds `nodetunnel` next to its own executable. Everything it creates (namespaces, tunnel
//! processes, temp files) is removed at the end, on error, and on Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use nodetunnel_testbed::traffic::{bulk_exchange, bulk_handler, echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, cleanup_on_signals, connect_from, env_refs, eventually::wait_until, generate_ca, port,
    require_namespaces, sibling_binary, tunnel_env, Ca, Capture, MeshConfig, Server, Topology,
    Tunnel,
};

type DemoResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    cleanup_on_signals();
    match run() {
        Ok(()) => {
            println!("\nAll namespaces and processes removed. Done.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> DemoResult {
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    println!("nodetunnel demo — binary {}\n", bin.display());

    let topo = Topology::two_node("demo", Capture::ALL)?;
    let mesh = MeshConfig::standard(8080);
    let config = topo.path("mesh.yaml");
    mesh.write(&config)?;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    tell_topology(&topo, &mesh);

    section("Starting one tunnel per node (dedicated mode, in the node's namespace)");
    let t1 = start(&topo, &bin, "n1", &config, &ca)?;
    let t2 = start(&topo, &bin, "n2", &config, &ca)?;

    let server = Server::start(topo.ns("n2"), (addr::SERVER, 8080).into(), bulk_handler)?;
    let plain = Server::start(topo.ns("n2"), (addr::NON_MESH, 9090).into(), echo_handler)?;

    hbone_transfer(&topo, &t1, &t2)?;
    service_request(&topo, &t1)?;
    passthrough(&topo, &t1)?;

    section("Cleaning up");
    drop((server, plain));
    for t in [t1, t2] {
        let pid = t.pid();
        let status = t.stop();
        println!(
            "  stopped tunnel pid {pid} ({})",
            status.map_or("?".into(), |s| s.to_string())
        );
    }
    drop(topo);
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn tell_topology(topo: &Topology, mesh: &MeshConfig) {
    section("Topology: two network namespaces joined by one veth link (10.77.0.0/16)");
    for node in topo.nodes() {
        println!(
            "  node {} — netns {} — {}",
            node.name(),
            node.ns().name(),
            node.ip()
        );
        for pod in node.pods() {
            let who = mesh
                .workloads
                .iter()
                .find(|w| w.ips.contains(&pod.ip))
                .map_or("not in the mesh".to_string(), |w| {
                    format!("identity {}", w.identity())
                });
            println!("      pod {:<8} {:<12} {who}", pod.name, pod.ip.to_string());
        }
    }
    for svc in &mesh.services {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|(p, t)| format!("{p} → {t}"))
            .collect();
        println!(
            "  service {} VIP {} port {}",
            svc.hostname,
            svc.vips[0],
            ports.join(", ")
        );
    }
    println!(
        "  capture: nat OUTPUT → :15001 (except mark 0x539), nat PREROUTING to mesh pods → :15006"
    );
    println!("  CA: a fresh root from `nodetunnel generate-ca`, shared by both tunnels");
}

fn start(topo: &Topology, bin: &Path, node: &str, config: &Path, ca: &Path) -> DemoResult<Tunnel> {
    let started = Instant::now();
    let env = tunnel_env(node, config, Ca::Dir(ca));
    let t = topo.start_tunnel(node, bin, &env_refs(&env))?;
    println!(
        "  {node}: pid {} ready after {} ms (GET /healthz/ready on :{} = 200)",
        t.pid(),
        started.elapsed().as_millis(),
        port::READINESS
    );
    Ok(t)
}

fn hbone_transfer(topo: &Topology, t1: &Tunnel, t2: &Tunnel) -> DemoResult {
    section("1) client 10.77.1.10 → server 10.77.2.10:8080: 10 MiB each way, over HBONE");
    let dst: SocketAddr = (addr::SERVER, 8080).into();
    let mut stream = topo.ns("n1").run(move || connect_from(addr::CLIENT, dst))?;
    let started = Instant::now();
    let transfer = thread::spawn(move || bulk_exchange(&mut stream, 1, 10 * MIB, 10 * MIB));
    let mut hbone = Vec::new();
    wait_until(Duration::from_secs(5), || {
        hbone = topo
            .ns("n2")
            .established("( sport = :15008 )")
            .unwrap_or_default();
        !hbone.is_empty()
    });
    let report = transfer.join().map_err(|_| "transfer thread panicked")??;
    if !report.is_exact() {
        return Err(format!("transfer was not byte-exact: {report:?}").into());
    }
    println!(
        "  sent {} MiB, received {} MiB back, both byte-exact, in {} ms",
        report.up_sent / MIB,
        report.down_received / MIB,
        started.elapsed().as_millis()
    );
    println!(
        "  mTLS connection on n2 while it ran (`ss -tn state established '( sport = :15008 )'`):"
    );
    for line in &hbone {
        println!(
            "      {}",
            line.split_whitespace().collect::<Vec<_>>().join("  ")
        );
    }
    if hbone.is_empty() {
        return Err("no HBONE connection on n2:15008 — the traffic did not use the tunnel".into());
    }
    let fields = [("dst", "10.77.2.10:8080"), ("protocol", "HBONE")];
    print_access("n1 (outbound)", t1, &fields)?;
    print_access("n2 (inbound)", t2, &fields)?;
    Ok(())
}

fn service_request(topo: &Topology, t1: &Tunnel) -> DemoResult {
    section("2) client → service VIP 10.96.0.10:80 (mapped to the endpoint's port 8080)");
    let vip: SocketAddr = (addr::SERVICE_VIP, 80).into();
    // The bulk server on :8080 answers a tiny exchange; this proves 80 → 8080 mapping.
    let mut stream = topo.ns("n1").run(move || connect_from(addr::CLIENT, vip))?;
    let report = bulk_exchange(&mut stream, 2, 1024, 1024)?;
    if !report.is_exact() {
        return Err(format!("VIP exchange not exact: {report:?}").into());
    }
    println!("  1 KiB each way through the VIP, byte-exact (only :8080 listens on the server)");
    drop(stream);
    let lines = wait_for_access(t1, &[("protocol", "HBONE")], 2)?;
    println!(
        "  n1 access log: {}",
        summarize(lines.last().map_or("", String::as_str))
    );
    Ok(())
}

fn passthrough(topo: &Topology, t1: &Tunnel) -> DemoResult {
    section("3) client → 10.77.2.20:9090, a server outside the mesh: plain TCP passthrough");
    let dst: SocketAddr = (addr::NON_MESH, 9090).into();
    let mut stream = topo.ns("n1").run(move || connect_from(addr::CLIENT, dst))?;
    echo_roundtrip(&mut stream, b"hello, legacy world")?;
    let hbone_on_n2 = topo.ns("n2").established_on_local_port(port::HBONE)?;
    println!("  echo round-trip OK; no new HBONE connection (n2 :15008 count still {hbone_on_n2})");
    drop(stream);
    print_access("n1", t1, &[("dst", "10.77.2.20:9090"), ("protocol", "TCP")])?;
    Ok(())
}

fn wait_for_access(
    t: &Tunnel,
    fields: &[(&str, &str)],
    at_least: usize,
) -> DemoResult<Vec<String>> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = t.access_lines(fields);
        lines.len() >= at_least
    });
    if lines.len() < at_least {
        return Err(format!(
            "tunnel pid {} logged no access line with {fields:?}; log tail:\n{}",
            t.pid(),
            t.log_tail(20)
        )
        .into());
    }
    Ok(lines)
}

fn print_access(label: &str, t: &Tunnel, fields: &[(&str, &str)]) -> DemoResult {
    let lines = wait_for_access(t, fields, 1)?;
    println!("  {label} access log: {}", summarize(&lines[0]));
    Ok(())
}

/// The access-log fields that tell the story, one line.
fn summarize(line: &str) -> String {
    [
        "direction",
        "src",
        "dst",
        "src_identity",
        "dst_identity",
        "protocol",
        "bytes_sent",
        "bytes_recv",
    ]
    .iter()
    .filter_map(|k| field(line, k).map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}
