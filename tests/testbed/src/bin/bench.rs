//! `nodetunnel-bench`: benchmarks on namespace topologies. Run them through the scripts in
//! `bench/`, which build the release binaries first.
//!
//! - `throughput [--seconds N]`: single-stream iperf3 from the client pod (10.77.1.10) to the
//!   server pod (10.77.2.10) on the two-node dedicated-mode topology, first directly (no
//!   capture rules, no tunnels), then through both tunnels (HBONE); both and the ratio.
//! - `inpod [--seconds N] [--requests N] [--runs N] [--idle N] [--profile DIR]
//!   [--tunnel-env KEY=VALUE]...`: pod → pod
//!   through two in-pod tunnels against the direct path of the same pods: iperf3 with 1 and 8
//!   streams, tunnel CPU per GB (each side and both), keep-alive and connection-per-request
//!   latency, memory per idle connection, tunnel RSS; medians of `--runs`, a table with the
//!   targets, optionally a `perf` profile of each tunnel (see [`inpod`]).
//! - `xds [--workloads N] [--services N] [--updates N]`: a large mesh (default 100,000
//!   workloads + 10,000 services) from `nodetunnel-control`: time to the first full sync,
//!   tunnel memory, single-workload update latency, against the same mesh from a file (see
//!   [`xds`]).
//! - `policy [--seconds N] [--rounds N]`: inbound HBONE connections per second (a new
//!   connection per request, 1 and 8 clients) to a workload with 100 authorization policies
//!   against none, alternating within one run, with the direct rate (see [`policy`]).
//! - `dns [--seconds N] [--window N]`: DNS queries per second from a pod through its DNS
//!   capture rules: answered by the tunnel's DNS proxy from the mesh state, forwarded by it to
//!   a resolver stand-in, and the stand-in asked directly (see [`dns`]).
//! - `http-serve <ip:port>`, `hold-serve <ip:port>` (internal): the tiny HTTP server and the
//!   connection holder the `inpod` bench runs in a pod.

#[path = "bench/dns.rs"]
mod dns;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/idle.rs"]
mod idle;
#[path = "bench/inpod.rs"]
mod inpod;
#[path = "bench/iperf.rs"]
mod iperf;
#[path = "bench/policy.rs"]
mod policy;
/// The policy sets of both policy benches (shared with `bench/policy_decision.rs`).
#[path = "../../../../bench/policy_set.rs"]
mod policy_set;
#[path = "bench/profile.rs"]
mod profile;
#[path = "bench/wrk.rs"]
mod wrk;
#[path = "bench/xds.rs"]
mod xds;

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use iperf::Reaped;
use nodetunnel_testbed::{
    addr, cleanup_on_signals, env_refs, eventually::wait_until, generate_ca, require_namespaces,
    sibling_binary, tunnel_env, Ca, Capture, Mesh, MeshConfig, Netns, Topology,
};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const IPERF_PORT: u16 = 5201;

const USAGE: &str = "usage: nodetunnel-bench throughput [--seconds N]
       nodetunnel-bench inpod [--seconds N] [--requests N] [--runs N] [--idle N] [--profile DIR]
                              [--tunnel-env KEY=VALUE]...
       nodetunnel-bench xds [--workloads N] [--services N] [--updates N]
       nodetunnel-bench policy [--seconds N] [--rounds N]
       nodetunnel-bench dns [--seconds N] [--window N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("throughput") => {
            cleanup_on_signals();
            Options::parse(&args[1..]).and_then(|o| throughput(o.seconds))
        }
        Some("inpod") => {
            cleanup_on_signals();
            Options::parse(&args[1..]).and_then(inpod::run)
        }
        Some("xds") => {
            cleanup_on_signals();
            xds::run(&args[1..])
        }
        Some("policy") => {
            cleanup_on_signals();
            policy::run(&args[1..])
        }
        Some("dns") => {
            cleanup_on_signals();
            dns::run(&args[1..])
        }
        Some("http-serve") if args.len() == 2 => http::serve(&args[1]),
        Some("hold-serve") if args.len() == 2 => idle::serve(&args[1]),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// This binary's `subcommand <addr>` server started inside `ns`, listening when this returns.
pub fn serve_in(ns: &Netns, subcommand: &str, addr: SocketAddr) -> BenchResult<Reaped> {
    let me = std::env::current_exe()?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&me)
        .arg(subcommand)
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = Reaped(child);
    iperf::wait_listening(ns, addr.port(), subcommand)?;
    Ok(server)
}

/// Command-line options shared by the benchmarks.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of each iperf3 and wrk run.
    pub seconds: u32,
    /// Timed requests of the connection-per-request test (`inpod`).
    pub requests: usize,
    /// Measured runs of each path; the table shows medians (`inpod`).
    pub runs: usize,
    /// Idle connections held through both tunnels for the memory figure (`inpod`).
    pub idle: usize,
    /// Where `perf` data and reports go; no profile step without it (`inpod`).
    pub profile: Option<std::path::PathBuf>,
    /// Extra environment of both tunnels, `KEY=VALUE` each (`inpod --tunnel-env`): runtime
    /// settings measured without a rebuild (e.g. `ZTUNNEL_WORKER_THREADS=1`).
    pub tunnel_env: Vec<(String, String)>,
}

impl Options {
    fn parse(args: &[String]) -> BenchResult<Options> {
        let mut options = Options {
            seconds: 10,
            requests: 2000,
            runs: 3,
            idle: 10_000,
            profile: None,
            tunnel_env: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = || -> BenchResult<usize> {
                match value.parse() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("{flag} {value}: not a positive number").into()),
                }
            };
            match flag.as_str() {
                "--seconds" => options.seconds = number()? as u32,
                "--requests" => options.requests = number()?,
                "--runs" => options.runs = number()?,
                "--idle" => options.idle = number()?,
                "--profile" => options.profile = Some(value.into()),
                "--tunnel-env" => match value.split_once('=') {
                    Some((key, val)) if !key.is_empty() => {
                        options.tunnel_env.push((key.to_string(), val.to_string()))
                    }
                    _ => return Err(format!("--tunnel-env {value}: expected KEY=VALUE").into()),
                },
                _ => return Err(format!("unexpected argument {flag:?}\n{USAGE}").into()),
            }
        }
        Ok(options)
    }
}

fn throughput(seconds: u32) -> BenchResult {
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    if Command::new("iperf3").arg("--version").output().is_err() {
        return Err("iperf3 is not installed".into());
    }
    let topo = Topology::two_node("bench", Capture::NONE)?;
    println!(
        "topology: {} (n1 client 10.77.1.10 ⇄ n2 server 10.77.2.10 over one veth link)",
        topo.prefix()
    );

    let _iperf_server = iperf::start_server(topo.ns("n2"), addr::SERVER, IPERF_PORT)?;
    let client = |ns| iperf::client(ns, addr::SERVER, addr::CLIENT, IPERF_PORT, seconds, 1);

    println!("direct (no capture, no tunnels), {seconds} s single stream ...");
    let direct = client(topo.ns("n1"))?.bits_per_second;
    println!("  direct: {:.2} Gbit/s", direct / 1e9);

    let config = topo.path("mesh.yaml");
    MeshConfig::standard(IPERF_PORT).write(&config)?;
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    for node in topo.nodes() {
        node.set_capture(Capture::ALL)?;
    }
    let start = |node: &str| {
        let env = tunnel_env(node, Mesh::File(&config), Ca::Dir(&ca));
        topo.start_tunnel(node, &bin, &env_refs(&env))
    };
    let t2 = start("n2")?;
    let t1 = start("n1")?;

    println!("through nodetunnel (HBONE: n1:15001 → mTLS h2 CONNECT → n2:15008), {seconds} s single stream ...");
    let tunneled = client(topo.ns("n1"))?.bits_per_second;
    // iperf3 opens a control and a data connection; both must have been carried over HBONE.
    let dst = format!("{}:{IPERF_PORT}", addr::SERVER);
    let fields = [("dst.addr", dst.as_str()), ("protocol", "HBONE")];
    let mut hbone_lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        hbone_lines = t1.access_lines(&fields);
        hbone_lines.len() >= 2
    });
    if hbone_lines.len() < 2 {
        return Err(format!(
            "n1's tunnel logged {} HBONE connections to the iperf3 server (want 2); log tail:\n{}",
            hbone_lines.len(),
            t1.log_tail(20)
        )
        .into());
    }
    println!(
        "  HBONE:  {:.2} Gbit/s ({} connections carried over HBONE per n1's access log)",
        tunneled / 1e9,
        hbone_lines.len()
    );
    drop((t1, t2));

    println!();
    println!(
        "single-stream throughput, {seconds} s each, release build, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  direct  {:>8.2} Gbit/s", direct / 1e9);
    println!("  HBONE   {:>8.2} Gbit/s", tunneled / 1e9);
    println!("  ratio   {:>8.1} % of direct", 100.0 * tunneled / direct);
    Ok(())
}
