//! The in-pod (shared mode) story, `nodetunnel-demo`'s default: every pod its own network
//! namespace with the in-pod rules, one tunnel per node namespace, a `nodetunnel-zds-agent`
//! per node handing it the pods' namespaces.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nodetunnel_testbed::inpod::mesh::uid_of;
use nodetunnel_testbed::traffic::{bulk_exchange, bulk_handler, echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    addr, connect_from, eventually::wait_until, generate_ca, Ca, InpodMesh, InpodRules, Match,
    Mesh, MeshBins, MeshConfig, PodTopology, Policy, PolicyScope, Server, Service, StringMatch,
};

use crate::{
    identity_of, print_access, print_services, section, squeeze, tell_control_plane, tell_xds_view,
    wait_for_access, Bins, DemoResult,
};

/// The tunnels' DRAIN_TIMEOUT: a deleted pod's live connections get this long.
const DRAIN: &str = "1s";

pub fn run(bins: &Bins) -> DemoResult {
    let bin = &bins.tunnel;
    println!("nodetunnel demo, in-pod mode — binary {}", bin.display());
    let topo = PodTopology::two_node("demo", InpodRules::Apply)?;
    let config = MeshConfig::standard(8080);
    let config_path = topo.path("mesh.yaml");
    config.write(&config_path)?;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(bin, &ca)?;
    tell_topology(&topo, &config);

    section("Control plane (in n1's netns)");
    let cp = topo.start_control_plane("n1", &bins.control, &config_path, &ca, &[])?;
    tell_control_plane(&cp, &config);

    section("One tunnel per node netns (PROXY_MODE=shared), handed pod netns fds by its ZDS agent");
    let started = Instant::now();
    let mesh_bins = MeshBins {
        tunnel: bin,
        zds_agent: &bins.zds_agent,
    };
    let mesh = InpodMesh::start(
        &topo,
        mesh_bins,
        Mesh::Control(&cp),
        Ca::Control(&cp),
        &[("DRAIN_TIMEOUT", DRAIN)],
    )?;
    println!("  (agent > … is a command on the agent's stdin, agent < … a line it printed)");
    for (node, tunnel) in mesh.tunnels() {
        let agent = mesh.agent(node);
        println!(
            "  {node}: `nodetunnel-zds-agent` pid {} on {}; tunnel pid {} (INPOD_UDS = that socket)",
            agent.pid(),
            agent.socket().file_name().unwrap_or_default().to_string_lossy(),
            tunnel.pid()
        );
        for line in agent.transcript() {
            println!("      agent {line}");
        }
    }
    let listening = topo.ns("client").exec("ss", &["-Hltn"])?;
    let mut ports: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next())
        .collect();
    ports.sort();
    ports.dedup();
    println!(
        "  both ready (/healthz/ready = 200) after {} ms; inside pod client the n1 tunnel listens on :{}",
        started.elapsed().as_millis(),
        ports.join(" :")
    );
    for (node, tunnel) in mesh.tunnels() {
        tell_xds_view(node, tunnel)?;
    }

    hbone_transfer(&topo, &mesh)?;
    vip_and_passthrough(&topo, &mesh)?;
    delete_pod(&topo, &mesh)?;
    let config = new_service(&topo, &mesh, config, &config_path)?;
    zero_trust(&topo, &mesh, config, &config_path)?;

    section("Cleaning up");
    for (node, tunnel, agent) in mesh.stop() {
        let status = |s: Option<std::process::ExitStatus>| s.map_or("?".into(), |s| s.to_string());
        println!(
            "  {node}: tunnel stopped ({}), agent stopped ({})",
            status(tunnel),
            status(agent)
        );
    }
    drop(topo);
    Ok(())
}

fn tell_topology(topo: &PodTopology, config: &MeshConfig) {
    section(
        "Topology: two node netns joined by a veth; every pod its own netns, routed via its node",
    );
    for node in topo.nodes() {
        println!(
            "  node {} {:<10} netns {}",
            node.name(),
            node.ip().to_string(),
            node.ns().name()
        );
        for pod in topo.pods_on(node.name()) {
            println!(
                "      pod {:<8} {:<11} netns {:<22} {}",
                pod.name(),
                pod.ip().to_string(),
                pod.ns().name(),
                identity_of(config, pod.ip())
            );
        }
    }
    print_services(config);
    println!(
        "  in every mesh pod (rules of the CNI agent): outbound TCP → :15001, inbound TCP → :15006"
    );
    println!("  except :15008; sockets marked 0x539 (the tunnel's own) pass. CA root: `nodetunnel generate-ca`");
}

/// Wraps a handler so the server app prints who connected (the source address it sees).
fn announcing(
    handler: fn(TcpStream) -> io::Result<()>,
) -> impl Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static {
    move |stream: TcpStream| {
        let peer = stream.peer_addr()?;
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "  server app (pod server): connection from {peer}");
        drop(out);
        handler(stream)
    }
}

fn hbone_transfer(topo: &PodTopology, mesh: &InpodMesh) -> DemoResult {
    section("1) pod client → pod server 10.77.2.10:8080: 10 MiB each way, over HBONE");
    let server = Server::start(
        topo.ns("server"),
        (addr::SERVER, 8080).into(),
        announcing(bulk_handler),
    )?;
    let dst: SocketAddr = (addr::SERVER, 8080).into();
    let hbone = super::bulk_over_hbone(topo.ns("client"), addr::CLIENT, dst, topo.ns("server"))?;
    println!("  inside pod server while it ran (`ss -tn state established '( sport = :15008 )'`):");
    for line in &hbone {
        println!("      {}", squeeze(line));
    }
    if hbone.is_empty() {
        return Err("no HBONE connection in the server pod on :15008".into());
    }
    let peers = server.peers();
    if peers
        .iter()
        .any(|p| p.ip() != std::net::IpAddr::from(addr::CLIENT))
    {
        return Err(format!("the server app saw {peers:?}, not the client pod's address").into());
    }
    println!("  → the app saw the client pod's address, not a tunnel's: source IP preserved");
    let fields = [("dst.addr", "10.77.2.10:8080"), ("protocol", "HBONE")];
    print_access("n1 tunnel (outbound)", mesh.tunnel("n1"), &fields)?;
    print_access("n2 tunnel (inbound)", mesh.tunnel("n2"), &fields)?;
    Ok(())
}

fn vip_and_passthrough(topo: &PodTopology, mesh: &InpodMesh) -> DemoResult {
    section("2) pod client → service VIP 10.96.0.10:80, and → pod plain (not in the mesh)");
    let _server = Server::start(topo.ns("server"), (addr::SERVER, 8080).into(), bulk_handler)?;
    let vip: SocketAddr = (addr::SERVICE_VIP, 80).into();
    let mut stream = topo
        .ns("client")
        .run(move || connect_from(addr::CLIENT, vip))?;
    let report = bulk_exchange(&mut stream, 2, 1024, 1024)?;
    if !report.is_exact() {
        return Err(format!("VIP exchange not exact: {report:?}").into());
    }
    drop(stream);
    let vip_line = wait_for_access(mesh.tunnel("n1"), &[("protocol", "HBONE")], 2)?;
    let endpoint = vip_line
        .last()
        .and_then(|l| field(l, "dst.addr"))
        .unwrap_or("?")
        .to_string();
    println!("  VIP: 1 KiB each way, byte-exact; n1 sent it over HBONE to endpoint {endpoint}");

    let _plain = Server::start(
        topo.ns("plain"),
        (addr::NON_MESH, 9090).into(),
        echo_handler,
    )?;
    let dst: SocketAddr = (addr::NON_MESH, 9090).into();
    let mut stream = topo
        .ns("client")
        .run(move || connect_from(addr::CLIENT, dst))?;
    echo_roundtrip(&mut stream, b"hello, legacy world")?;
    drop(stream);
    let fields = [("dst.addr", "10.77.2.20:9090"), ("protocol", "TCP")];
    wait_for_access(mesh.tunnel("n1"), &fields, 1)?;
    println!("  plain: echo OK, passed through as plain TCP (n1 access log: protocol=TCP)");
    Ok(())
}

fn delete_pod(topo: &PodTopology, mesh: &InpodMesh) -> DemoResult {
    section("3) the agent deletes pod client2 from n1's tunnel");
    let _server = Server::start(topo.ns("server"), (addr::SERVER, 8080).into(), echo_handler)?;
    let pod = topo.pod("client2");
    let agent = mesh.agent("n1");
    let from = agent.transcript().len();
    mesh.del(pod)?;
    for line in &agent.transcript()[from..] {
        println!("      agent {line}");
    }
    let dst: SocketAddr = (addr::SERVER, 8080).into();
    let refused = topo
        .ns("client2")
        .run(move || connect_from(addr::CLIENT2, dst));
    match refused {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => println!(
            "  client2 → server: connection refused (its rules still redirect to :15001; nothing listens)"
        ),
        other => {
            return Err(format!("{}: new connection after del: {other:?}", uid_of(pod)).into())
        }
    }
    let mut stream = topo
        .ns("client")
        .run(move || connect_from(addr::CLIENT, dst))?;
    echo_roundtrip(&mut stream, b"still meshed")?;
    println!("  client → server: still works (the other pods are untouched)");
    Ok(())
}

/// A service added to mesh.yaml while everything runs: the control plane sees the file change
/// and pushes just that service to both tunnels, and a client can use its VIP at once.
fn new_service(
    topo: &PodTopology,
    mesh: &InpodMesh,
    mut config: MeshConfig,
    path: &Path,
) -> DemoResult<MeshConfig> {
    section(
        "4) mesh.yaml gains service canary (VIP 10.96.0.11:80 → server:8080), nothing restarts",
    );
    let vip = std::net::Ipv4Addr::new(10, 96, 0, 11);
    let canary = Service::new("canary", vip, &[(80, 8080)]);
    let server = config.workload_mut("server");
    server
        .services
        .push((format!("default/{}", canary.hostname), vec![(80, 8080)]));
    config.services.push(canary);
    let written = Instant::now();
    config.write(path)?;
    let n1 = mesh.tunnel("n1");
    let has_canary = || {
        n1.config_dump().is_ok_and(|d| {
            d["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "canary"))
        })
    };
    if !wait_until(Duration::from_secs(10), has_canary) {
        return Err("the new service never reached the n1 tunnel".into());
    }
    println!(
        "  the n1 tunnel had it {} ms after the file was written (delta xDS push)",
        written.elapsed().as_millis()
    );
    let _server = Server::start(topo.ns("server"), (addr::SERVER, 8080).into(), echo_handler)?;
    let dst: SocketAddr = (vip, 80).into();
    let hbone_before = n1.access_lines(&[("protocol", "HBONE")]).len();
    let mut stream = topo
        .ns("client")
        .run(move || connect_from(addr::CLIENT, dst))?;
    echo_roundtrip(&mut stream, b"hello, canary")?;
    drop(stream);
    let line = wait_for_access(n1, &[("protocol", "HBONE")], hbone_before + 1)?;
    let endpoint = line
        .last()
        .and_then(|l| field(l, "dst.addr"))
        .unwrap_or("?")
        .to_string();
    println!("  client → 10.96.0.11:80: echo OK, over HBONE to endpoint {endpoint}");
    Ok(config)
}

/// STRICT mTLS and an ALLOW policy pushed while everything runs: the mesh client still gets
/// through; a plaintext client outside the mesh is refused, and the server's tunnel says why.
fn zero_trust(
    topo: &PodTopology,
    mesh: &InpodMesh,
    mut config: MeshConfig,
    path: &Path,
) -> DemoResult {
    section(
        "5) policies pushed over xDS: STRICT mTLS mesh-wide; only `client` may call server:8080",
    );
    config.policies.push(
        Policy::deny("istio-system", "istio_converted_static_strict")
            .scope(PolicyScope::Global)
            .rule([[Match {
                not_principals: vec![StringMatch::Presence],
                ..Match::default()
            }]]),
    );
    config.policies.push(
        Policy::allow("default", "allow-client").rule([[Match::default()
            .principal(StringMatch::exact("cluster.local/ns/default/sa/client"))
            .destination_port(8080)]]),
    );
    println!(
        "  istio-system/istio_converted_static_strict: Deny, Global, notPrincipals: [!Presence []]"
    );
    println!("  default/allow-client: Allow, Namespace, principals: [!Exact cluster.local/ns/default/sa/client], port 8080");
    config.write(path)?;
    let n2 = mesh.tunnel("n2");
    let has_both = || {
        n2.config_dump()
            .is_ok_and(|d| d["policies"].as_array().is_some_and(|p| p.len() == 2))
    };
    if !wait_until(Duration::from_secs(10), has_both) {
        return Err("the policies never reached the n2 tunnel".into());
    }
    let _server = Server::start(topo.ns("server"), (addr::SERVER, 8080).into(), echo_handler)?;
    let dst: SocketAddr = (addr::SERVER, 8080).into();
    let mut stream = topo
        .ns("client")
        .run(move || connect_from(addr::CLIENT, dst))?;
    echo_roundtrip(&mut stream, b"hello, zero trust")?;
    drop(stream);
    println!("  client → server:8080 (mTLS identity spiffe://cluster.local/ns/default/sa/client): echo OK");

    let denied_before = n2.access_lines(&[("flag", "policy_denied")]).len();
    let got = topo.ns("plain").run(move || -> io::Result<usize> {
        let mut s = connect_from(addr::NON_MESH, dst)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.write_all(b"let me in\n");
        let mut buf = Vec::new();
        let _ = io::Read::read_to_end(&mut s, &mut buf);
        Ok(buf.len())
    })?;
    if got != 0 {
        return Err(format!("the plaintext client got {got} bytes back under STRICT").into());
    }
    let lines = wait_for_access(n2, &[("flag", "policy_denied")], denied_before + 1)?;
    let line = lines.last().map_or("", String::as_str);
    println!("  plain 10.77.2.20 (outside the mesh, plaintext) → server:8080: closed at once");
    println!(
        "  n2 access log: src={} dst={} protocol={} flag=policy_denied",
        field(line, "src.addr").unwrap_or("?"),
        field(line, "dst.addr").unwrap_or("?"),
        field(line, "protocol").unwrap_or("?"),
    );
    let query = "/debug/authorize?source_ip=10.77.2.20&destination=10.77.2.10&port=8080";
    let answer: serde_json::Value = serde_json::from_str(&n2.admin_get(query)?)?;
    println!("  why? GET 127.0.0.1:15000{query} on n2 answers:");
    println!(
        "      decision {}: {}",
        answer["decision"].as_str().unwrap_or("?"),
        answer["reason"].as_str().unwrap_or("?")
    );
    for policy in answer["policies"].as_array().into_iter().flatten() {
        let first_field = &policy["rules"][0]["clauses"][0]["matches"][0]["fields"][0];
        println!(
            "      {} ({} {}): {} — {}: {}",
            policy["policy"].as_str().unwrap_or("?"),
            policy["scope"].as_str().unwrap_or("?"),
            policy["action"].as_str().unwrap_or("?"),
            policy["why"].as_str().unwrap_or("?"),
            first_field["field"].as_str().unwrap_or("?"),
            first_field["why"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
