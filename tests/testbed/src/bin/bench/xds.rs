//! `nodetunnel-bench xds`: a large mesh from the control plane.
//!
//! A mesh of `--workloads` workloads and `--services` services (every workload the endpoint of
//! one service) is served by `nodetunnel-control` on n1; a dedicated-mode tunnel on n2 (whose
//! node runs none of those workloads, so no certificates are issued) subscribes to it. Measured:
//! time from the tunnel's start to the first full sync (all resources accepted), the tunnel's
//! resident memory afterwards, and `--updates` single-workload additions to the file, each timed
//! from the file write to the tunnel having it (file watch + reload + diff + push + apply) plus
//! the tunnel's own apply time. The same mesh loaded from a file (`LOCAL_XDS_PATH`) by the same
//! tunnel, in the same run, is the baseline.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nodetunnel_testbed::tunnel::http_get;
use nodetunnel_testbed::{
    env_refs, generate_ca, procstat, require_namespaces, set_env, sibling_binary, tunnel_env, Ca,
    Capture, Mesh, MeshConfig, Service, Topology, Tunnel, Workload,
};

use crate::BenchResult;

const USAGE: &str = "usage: nodetunnel-bench xds [--workloads N] [--services N] [--updates N]";
const ADDRESS_URL: &str = "type.googleapis.com/istio.workload.Address";
const SYNC_DEADLINE: Duration = Duration::from_secs(300);
/// A node name no generated workload uses, so the tunnel serves (and certifies) nothing.
const IDLE_NODE: &str = "bench-idle";

struct XdsOptions {
    workloads: usize,
    services: usize,
    updates: usize,
}

fn parse(args: &[String]) -> BenchResult<XdsOptions> {
    let mut o = XdsOptions {
        workloads: 100_000,
        services: 10_000,
        updates: 5,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number\n{USAGE}"))?;
        match flag.as_str() {
            "--workloads" => o.workloads = value,
            "--services" => o.services = value,
            "--updates" => o.updates = value,
            _ => return Err(format!("unexpected argument {flag:?}\n{USAGE}").into()),
        }
    }
    if o.workloads > 1 << 20 || o.services > 1 << 16 {
        return Err("at most 1048576 workloads and 65536 services".into());
    }
    Ok(o)
}

/// Workload `i` gets 10.128.0.0 + i, service `j` VIP 10.100.0.0 + j.
fn big_mesh(workloads: usize, services: usize) -> MeshConfig {
    let ip = |base: u32, i: usize| Ipv4Addr::from(base + i as u32);
    let services: Vec<Service> = (0..services)
        .map(|j| Service::new(&format!("s{j}"), ip(0x0a64_0000, j), &[(80, 8080)]))
        .collect();
    let workloads = (0..workloads)
        .map(|i| {
            Workload::new(
                &format!("w{i}"),
                ip(0x0a80_0000, i),
                &format!("node-{}", i % 100),
            )
            .endpoint_of(&services[i % services.len()], &[(80, 8080)])
        })
        .collect();
    MeshConfig {
        workloads,
        services,
        ..MeshConfig::default()
    }
}

/// `nodetunnel_xds_resources{url="…Address"}` and `nodetunnel_xds_last_apply_seconds` from
/// the tunnel's metrics (`None` before the first scrape succeeds).
fn xds_metrics(t: &Tunnel) -> Option<(u64, f64)> {
    let (code, body) = t.ns().run(|| http_get(15020, "/metrics")).ok()?;
    if code != 200 {
        return None;
    }
    let value = |prefix: &str| {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let resources = value(&format!(
        "nodetunnel_xds_resources{{url=\"{ADDRESS_URL}\"}}"
    ))?;
    let apply = value("nodetunnel_xds_last_apply_seconds").unwrap_or(0.0);
    Some((resources as u64, apply))
}

fn wait_for_resources(t: &mut Tunnel, want: u64) -> BenchResult<(Duration, f64)> {
    let start = Instant::now();
    loop {
        if let Some((have, apply)) = xds_metrics(t) {
            if have >= want {
                return Ok((start.elapsed(), apply));
            }
        }
        if let Some(status) = t.try_wait()? {
            return Err(format!("tunnel exited with {status}:\n{}", t.log_tail(20)).into());
        }
        if start.elapsed() > SYNC_DEADLINE {
            return Err(
                format!("no full sync within {SYNC_DEADLINE:?}:\n{}", t.log_tail(20)).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_mib(pid: u32) -> BenchResult<(f64, f64)> {
    let (rss, hwm) = procstat::memory_kib(pid)?;
    Ok((rss as f64 / 1024.0, hwm as f64 / 1024.0))
}

pub fn run(args: &[String]) -> BenchResult {
    let o = parse(args)?;
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    let control = sibling_binary("nodetunnel-control")?;
    let topo = Topology::two_node("benchxds", Capture::NONE)?;
    let mut mesh = big_mesh(o.workloads, o.services);
    let path = topo.path("mesh.yaml");
    mesh.write(&path)?;
    let yaml_mib = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    let total = (o.workloads + o.services) as u64;
    println!(
        "mesh: {} workloads + {} services ({yaml_mib:.1} MiB of YAML); tunnel on n2 (serves none of them)",
        o.workloads, o.services
    );

    // Baseline: the same mesh from a file.
    let started = Instant::now();
    let mut env = tunnel_env("n2", Mesh::File(&path), Ca::Dir(&ca));
    set_env(&mut env, "NODE_NAME", IDLE_NODE);
    let file_tunnel = topo.start_tunnel("n2", &bin, &env_refs(&env))?;
    let file_ready = started.elapsed();
    let (file_rss, file_hwm) = rss_mib(file_tunnel.pid())?;
    drop(file_tunnel);
    println!(
        "  file (LOCAL_XDS_PATH): ready after {:.2} s, RSS {file_rss:.1} MiB (peak {file_hwm:.1})",
        file_ready.as_secs_f64()
    );

    let cp_started = Instant::now();
    let cp = topo.start_control_plane("n1", &control, &path, &ca, &[])?;
    let cp_ready = cp_started.elapsed();
    let (cp_rss, _) = rss_mib(cp.pid())?;
    println!(
        "  control plane ready after {:.2} s (loads, converts and hashes the mesh), RSS {cp_rss:.1} MiB",
        cp_ready.as_secs_f64()
    );

    let started = Instant::now();
    let mut env = tunnel_env("n2", Mesh::Control(&cp), Ca::Dir(&ca));
    set_env(&mut env, "NODE_NAME", IDLE_NODE);
    let log = topo.path("n2-xds-bench.log");
    let mut t = Tunnel::spawn(topo.ns("n2"), &bin, &env_refs(&env), &log)?;
    let (synced, first_apply) = wait_for_resources(&mut t, total)?;
    t.wait_ready(SYNC_DEADLINE)?;
    let ready = started.elapsed();
    let (rss, hwm) = rss_mib(t.pid())?;
    println!(
        "  xDS: all {total} resources after {:.2} s (tunnel apply {:.0} ms), ready after {:.2} s, RSS {rss:.1} MiB (peak {hwm:.1})",
        synced.as_secs_f64(),
        first_apply * 1e3,
        ready.as_secs_f64()
    );

    let mut end_to_end = Vec::new();
    let mut applies = Vec::new();
    for i in 0..o.updates {
        let ip = Ipv4Addr::from(0x0a70_0000 + i as u32);
        mesh = mesh.with_workload(Workload::new(&format!("extra{i}"), ip, "node-0"));
        let written = Instant::now();
        mesh.write(&path)?;
        let (_, apply) = wait_for_resources(&mut t, total + i as u64 + 1)?;
        end_to_end.push(written.elapsed().as_secs_f64());
        applies.push(apply);
    }
    let (rss_after, _) = rss_mib(t.pid())?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let e2e = median(&mut end_to_end);
    let apply = median(&mut applies);

    println!();
    println!(
        "delta xDS bench, release build, {} cores, {} workloads + {} services",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.workloads,
        o.services
    );
    println!("  {:<46} {:>12} {:>12}", "", "file", "xDS");
    println!(
        "  {:<46} {:>10.2} s {:>10.2} s   ({:.2}x the file)",
        "start → ready (all resources applied)",
        file_ready.as_secs_f64(),
        ready.as_secs_f64(),
        ready.as_secs_f64() / file_ready.as_secs_f64()
    );
    println!(
        "  {:<46} {:>12} {:>10.2} s",
        "start → first full sync",
        "-",
        synced.as_secs_f64()
    );
    println!(
        "  {:<46} {:>8.1} MiB {:>8.1} MiB   ({:.2}x the file)",
        "tunnel RSS after sync",
        file_rss,
        rss,
        rss / file_rss
    );
    println!(
        "  {:<46} {:>12} {:>8.1} ms",
        format!(
            "1-workload update, file write → tunnel (median of {})",
            o.updates
        ),
        "-",
        e2e * 1e3
    );
    println!(
        "  {:<46} {:>12} {:>8.3} ms",
        "  of which the tunnel's apply (median)",
        "-",
        apply * 1e3
    );
    println!(
        "  tunnel RSS after the updates {rss_after:.1} MiB; control plane RSS {cp_rss:.1} MiB"
    );
    Ok(())
}
