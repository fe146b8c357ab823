//! The dedicated-mode story (`nodetunnel-demo dedicated`): pods are addresses in their node's
//! namespace, node-level capture rules, one tunnel per node serving its pods from there.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use nodetunnel_testbed::traffic::{bulk_exchange, bulk_handler, echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, connect_from, env_refs, generate_ca, port, tunnel_env, Ca, Capture, ControlPlane, Mesh,
    MeshConfig, Server, Topology, Tunnel,
};

use crate::{
    identity_of, print_access, print_services, section, squeeze, summarize, tell_control_plane,
    tell_xds_view, wait_for_access, Bins, DemoResult,
};

pub fn run(bins: &Bins) -> DemoResult {
    let bin = &bins.tunnel;
    println!(
        "nodetunnel demo, dedicated mode (tunnels serve their pods from the node's netns) — binary {}",
        bin.display()
    );

    let topo = Topology::two_node("demo", Capture::ALL)?;
    let mesh = MeshConfig::standard(8080);
    let config = topo.path("mesh.yaml");
    mesh.write(&config)?;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(bin, &ca)?;
    tell_topology(&topo, &mesh);

    section("Control plane");
    let cp = topo.start_control_plane("n1", &bins.control, &config, &ca, &[])?;
    tell_control_plane(&cp, &mesh);

    section("Starting one tunnel per node (dedicated mode, in the node's namespace)");
    let t1 = start(&topo, bin, "n1", &cp)?;
    let t2 = start(&topo, bin, "n2", &cp)?;
    tell_xds_view("n1", &t1)?;
    tell_xds_view("n2", &t2)?;

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
            let who = identity_of(mesh, pod.ip);
            println!("      pod {:<8} {:<12} {who}", pod.name, pod.ip.to_string());
        }
    }
    print_services(mesh);
    println!(
        "  capture: nat OUTPUT → :15001 (except mark 0x539), nat PREROUTING to mesh pods → :15006"
    );
    println!("  CA: a fresh root from `nodetunnel generate-ca`, loaded by the control plane");
}

fn start(topo: &Topology, bin: &Path, node: &str, cp: &ControlPlane) -> DemoResult<Tunnel> {
    let started = Instant::now();
    let env = tunnel_env(node, Mesh::Control(cp), Ca::Control(cp));
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
    let hbone = super::bulk_over_hbone(topo.ns("n1"), addr::CLIENT, dst, topo.ns("n2"))?;
    println!(
        "  mTLS connection on n2 while it ran (`ss -tn state established '( sport = :15008 )'`):"
    );
    for line in &hbone {
        println!("      {}", squeeze(line));
    }
    if hbone.is_empty() {
        return Err("no HBONE connection on n2:15008 — the traffic did not use the tunnel".into());
    }
    let fields = [("dst.addr", "10.77.2.10:8080"), ("protocol", "HBONE")];
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
    print_access(
        "n1",
        t1,
        &[("dst.addr", "10.77.2.20:9090"), ("protocol", "TCP")],
    )?;
    Ok(())
}
