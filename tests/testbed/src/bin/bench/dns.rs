//! `nodetunnel-bench dns [--seconds N] [--window N]`: DNS queries per second from the client
//! pod (its real DNS capture rules: UDP 53 → the tunnel's 15053) on a two-node shared-mode
//! mesh, three ways in one run:
//! 1. a mesh service's FQDN, answered by the proxy from the mesh state;
//! 2. an outside name, forwarded by the proxy to the resolver stand-in (`testbed::resolver`,
//!    a single-threaded server in node n1's namespace) and back;
//! 3. the same outside name asked of the stand-in directly from n1's namespace (no proxy):
//!    the upstream's own ceiling, which bounds (2).
//!
//! One UDP socket keeps `--window` queries in flight (default 32); a reply that does not come
//! within a second counts as lost and its slot is reused.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodetunnel_testbed::inpod::{
    apply_inpod_rules_with_dns_capture, InpodMesh, InpodRules, MeshBins, PodTopology,
};
use nodetunnel_testbed::resolver::ResolverStandIn;
use nodetunnel_testbed::{
    addr, generate_ca, require_namespaces, sibling_binary, Ca, Mesh, MeshConfig, ZDS_AGENT_BIN,
};

use crate::BenchResult;

const MESH_NAME: &str = "server.default.svc.cluster.local.";
const OUTSIDE_NAME: &str = "outside.example.org.";

struct Rate {
    answered: u64,
    lost: u64,
    per_second: f64,
}

pub fn run(args: &[String]) -> BenchResult {
    let (mut seconds, mut window) = (5u64, 32usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{flag} needs a positive number"))?;
        match flag.as_str() {
            "--seconds" => seconds = value,
            "--window" => window = value as usize,
            _ => return Err(format!("unexpected argument {flag:?}").into()),
        }
    }
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    let topo = PodTopology::two_node("dnsbench", InpodRules::Apply)?;
    apply_inpod_rules_with_dns_capture(topo.pod("client").ns())?;
    let resolver = ResolverStandIn::start(topo.node_ns("n1"), addr::NODE1)?;
    let config = topo.path("mesh.yaml");
    MeshConfig::standard(8080).write(&config)?;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    let zds_agent = sibling_binary(ZDS_AGENT_BIN)?;
    let bins = MeshBins {
        tunnel: &bin,
        zds_agent: &zds_agent,
    };
    let mesh = InpodMesh::start(&topo, bins, Mesh::File(&config), Ca::Dir(&ca), &[])?;
    let nameserver = SocketAddr::from((addr::NODE1, 53));
    let measure = |ns: &nodetunnel_testbed::Netns, name: &'static str| -> BenchResult<Rate> {
        let rate = ns.run(move || load(nameserver, name, seconds, window))?;
        Ok(rate)
    };
    let pod = topo.pod("client").ns();
    println!("warm-up ...");
    measure(pod, MESH_NAME)?;
    measure(pod, OUTSIDE_NAME)?;
    println!("{seconds} s each, {window} in flight, one UDP client socket");
    let local = measure(pod, MESH_NAME)?;
    let forwarded = measure(pod, OUTSIDE_NAME)?;
    let direct = measure(topo.node_ns("n1"), OUTSIDE_NAME)?;
    drop(mesh);
    drop(resolver);
    println!();
    println!(
        "DNS queries per second, {} build of the bench, {} cores",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (what, r) in [
        ("mesh name, answered by the proxy", &local),
        ("outside name, forwarded by the proxy", &forwarded),
        ("outside name, stand-in asked directly", &direct),
    ] {
        println!(
            "  {what:<40} {:>10.0} q/s  ({} answered, {} lost)",
            r.per_second, r.answered, r.lost
        );
    }
    Ok(())
}

/// Queries for `name` to `to` for `seconds`, `window` at a time; counts the replies.
fn load(to: SocketAddr, name: &str, seconds: u64, window: usize) -> io::Result<Rate> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let name = Name::from_ascii(name).map_err(io::Error::other)?;
    let mut next_id: u16 = 0;
    let mut outstanding: HashSet<u16> = HashSet::new();
    let (mut answered, mut lost) = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        while outstanding.len() < window {
            let mut q = Message::query();
            q.metadata.id = next_id;
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(name.clone(), RecordType::A));
            socket.send(&q.to_vec().map_err(io::Error::other)?)?;
            outstanding.insert(next_id);
            next_id = next_id.wrapping_add(1);
        }
        match socket.recv(&mut buf) {
            Ok(len) if len >= 2 => {
                if outstanding.remove(&u16::from_be_bytes([buf[0], buf[1]])) {
                    answered += 1;
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                lost += outstanding.len() as u64;
                outstanding.clear();
            }
            Err(e) => return Err(e),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Rate {
        answered,
        lost,
        per_second: answered as f64 / elapsed,
    })
}
