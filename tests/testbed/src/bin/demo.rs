//! `nodetunnel-demo`: two nodes, pods as network namespaces, one tunnel per node in shared
//! (in-pod) mode fed by a ZDS agent, traffic told as a story. `nodetunnel-demo dedicated` tells
//! the older story: tunnels serving their pods from the node's own namespace.
//! `nodetunnel-demo cni` shows the CNI node agent enrolling running pods when their namespace is
//! labelled for ambient, and removing them when the label goes.
//!
//! ```text
//! cargo build --release && sudo ./target/release/nodetunnel-demo [dedicated|cni]
//! ```
//!
//! All stories get their configuration and certificates from `nodetunnel-control` (delta xDS
//! and the CA over gRPC), which runs in node n1's namespace.
//!
//! Finds `nodetunnel`, `nodetunnel-control` and `nodetunnel-zds-agent` (and for `cni`, `nodetunnel-cni-agent` and
//! `nodetunnel-cni`) next to its own executable. Everything it creates (namespaces, tunnel
//! and agent processes, temp files) is removed at the end, on error, and on Ctrl-C.

#[path = "demo/cni.rs"]
mod cni;
#[path = "demo/dedicated.rs"]
mod dedicated;
#[path = "demo/inpod.rs"]
mod inpod;

use std::process::ExitCode;
use std::time::Duration;

use nodetunnel_testbed::tunnel::field;
use nodetunnel_testbed::{
    cleanup_on_signals, eventually::wait_until, require_namespaces, sibling_binary, ControlPlane,
    MeshConfig, Tunnel, ZDS_AGENT_BIN,
};

type DemoResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    cleanup_on_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => run(inpod::run),
        ["dedicated"] => run(dedicated::run),
        ["cni"] => run(cni::run),
        _ => Err("usage: nodetunnel-demo [dedicated|cni]".into()),
    };
    match result {
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

/// The binaries the demo drives (found next to its own executable).
struct Bins {
    /// `nodetunnel`: the tunnel daemon and `generate-ca`.
    tunnel: std::path::PathBuf,
    /// `nodetunnel-zds-agent`: the in-pod story's stand-in node agent (one per node).
    zds_agent: std::path::PathBuf,
    /// `nodetunnel-control`: xDS and CA for the tunnels.
    control: std::path::PathBuf,
}

fn run(story: fn(&Bins) -> DemoResult) -> DemoResult {
    require_namespaces()?;
    let bins = Bins {
        tunnel: sibling_binary("nodetunnel")?,
        control: sibling_binary("nodetunnel-control")?,
        zds_agent: sibling_binary(ZDS_AGENT_BIN)?,
    };
    story(&bins)
}

/// Tells where the control plane runs and what it serves.
fn tell_control_plane(cp: &ControlPlane, mesh: &MeshConfig) {
    println!(
        "  nodetunnel-control pid {} on {}: delta xDS ({} workloads, {} service) and the CA,",
        cp.pid(),
        cp.url(),
        mesh.workloads.len(),
        mesh.services.len()
    );
    println!(
        "  from mesh.yaml (watched: edits are pushed); each tunnel presents a bearer token over TLS,\n  \
         bound to its node: certificates only for its own node's workloads"
    );
}

/// One line per tunnel: what it received over xDS and which certificates it holds.
fn tell_xds_view(node: &str, t: &Tunnel) -> DemoResult {
    let dump = t.config_dump()?;
    let count = |key: &str| dump[key].as_array().map_or(0, Vec::len);
    let certs: Vec<&str> = dump["certificates"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["identity"].as_str()).collect())
        .unwrap_or_default();
    println!(
        "  {node} tunnel: xDS connected={}, {} workloads + {} services received; certificates from the CA: {}",
        dump["xds"]["connected"],
        count("workloads"),
        count("services"),
        if certs.is_empty() { "none yet".to_string() } else { certs.join(", ") }
    );
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// `identity spiffe://…` of the workload with address `ip`, or `not in the mesh`.
fn identity_of(mesh: &MeshConfig, ip: std::net::Ipv4Addr) -> String {
    mesh.workloads
        .iter()
        .find(|w| w.ips.contains(&ip))
        .map_or("not in the mesh".to_string(), |w| {
            format!("identity {}", w.identity())
        })
}

fn print_services(mesh: &MeshConfig) {
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
        "src.addr",
        "dst.addr",
        "src.identity",
        "dst.identity",
        "protocol",
        "bytes_sent",
        "bytes_recv",
    ]
    .iter()
    .filter_map(|k| field(line, k).map(|v| format!("{k}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

/// An `ss` line with its columns separated by two spaces.
fn squeeze(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join("  ")
}

/// Sends 10 MiB each way from `client` (in namespace `from`) to `dst` and prints how it went,
/// catching the HBONE connection on :15008 in namespace `hbone_side` while it runs. Returns
/// those `ss` lines.
fn bulk_over_hbone(
    from: &nodetunnel_testbed::Netns,
    client: std::net::Ipv4Addr,
    dst: std::net::SocketAddr,
    hbone_side: &nodetunnel_testbed::Netns,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use nodetunnel_testbed::eventually::wait_until;
    use nodetunnel_testbed::traffic::bulk_exchange;
    let mut stream = from.run(move || nodetunnel_testbed::connect_from(client, dst))?;
    let started = std::time::Instant::now();
    let transfer = std::thread::spawn(move || bulk_exchange(&mut stream, 1, 10 * MIB, 10 * MIB));
    let mut hbone = Vec::new();
    wait_until(std::time::Duration::from_secs(5), || {
        hbone = hbone_side
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
    Ok(hbone)
}
