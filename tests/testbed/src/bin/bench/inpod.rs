//! `nodetunnel-bench inpod`: pod client (10.77.1.10, node n1) → pod server (10.77.2.10, node
//! n2) on the in-pod topology, through two shared-mode tunnels, against the direct path of the
//! same pods in the same run.
//!
//! Direct is measured first: the topology is built without the in-pod rules and no tunnel or
//! agent runs, so packets go pod → n1 → n2 → pod through the kernel alone, over the very veths,
//! routes and namespaces the meshed runs use next. Then the rules are installed in the mesh
//! pods, an [`InpodMesh`] is started (agents enrol the pods), and every measurement repeats.
//!
//! - iperf3, 1 and 8 streams, `--seconds` each: Gbit/s and bytes from `end.sum_received`;
//! - tunnel CPU: utime + stime of both tunnel processes (`/proc/<pid>/stat`) across each iperf3
//!   run, per 10^9 bytes received by the iperf3 server;
//! - keep-alive latency: `wrk -t1 -c1 --latency` against `nodetunnel-bench http-serve` in the
//!   server pod (one connection, one request at a time: unloaded latency);
//! - connection-per-request latency: our own client in the client pod times connect + `GET`
//!   with `Connection: close` + the whole response, one at a time, after 100 untimed warm-ups;
//! - tunnel memory: VmRSS once the mesh is set up (before any meshed traffic), VmHWM at the end.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::Duration;

use nodetunnel_testbed::procstat::{self, ProcStats};
use nodetunnel_testbed::{
    addr, apply_inpod_rules, eventually::wait_until, generate_ca, require_namespaces,
    sibling_binary, Ca, InpodMesh, InpodRules, Mesh, MeshBins, MeshConfig, PodTopology,
    ZDS_AGENT_BIN,
};

use crate::iperf::{self, Reaped};
use crate::{http, wrk, BenchResult, Options, IPERF_PORT};

const HTTP_PORT: u16 = 8081;
const WARMUP_REQUESTS: usize = 100;
const MULTI_STREAMS: u32 = 8;
const GB: f64 = 1e9;
const MIB: f64 = 1024.0;

/// The figures of one path.
struct Figures {
    single: iperf::Run,
    multi: iperf::Run,
    /// CPU seconds of both tunnels during the single- and multi-stream runs (meshed only).
    single_cpu: Option<f64>,
    multi_cpu: Option<f64>,
    keepalive: wrk::Report,
    new_conn_p50: Duration,
    new_conn_p99: Duration,
}

pub fn run(options: Options) -> BenchResult {
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    let zds_agent = sibling_binary(ZDS_AGENT_BIN)?;
    for tool in ["iperf3", "wrk"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not installed").into());
        }
    }
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "in-pod bench: pod client 10.77.1.10 (n1) → pod server 10.77.2.10 (n2), {} s per run, {cores} cores",
        options.seconds
    );
    warn_if_busy();

    let topo = PodTopology::two_node("bench-inpod", InpodRules::Skip)?;
    let server_ns = topo.ns("server");
    let _iperf = iperf::start_server(server_ns, addr::SERVER, IPERF_PORT)?;
    let _http = start_http_server(&topo)?;

    println!("direct: same pods, no in-pod rules, no tunnels ...");
    let direct = measure(&topo, options, None)?;

    for pod in topo.pods().iter().filter(|p| p.mesh()) {
        apply_inpod_rules(pod.ns())?;
    }
    let config = topo.path("mesh.yaml");
    MeshConfig::standard(IPERF_PORT).write(&config)?;
    let ca = topo.path("ca");
    fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    let bins = MeshBins {
        tunnel: &bin,
        zds_agent: &zds_agent,
    };
    let mesh = InpodMesh::start(&topo, bins, Mesh::File(&config), Ca::Dir(&ca), &[])?;
    thread::sleep(Duration::from_millis(500));
    let idle = stats(&mesh)?;
    println!(
        "in-pod: rules installed, tunnels {:?} ready, pods enrolled by their agents ...",
        mesh.pids()
    );
    let meshed = measure(&topo, options, Some(&mesh))?;
    let end = stats(&mesh)?;
    let hbone = check_hbone(&mesh, options)?;

    print_table(options, cores, &direct, &meshed, &idle, &end);
    println!("\nnotes:");
    println!(
        "  direct = the same pod netns, veths and routes, measured first, before the in-pod rules"
    );
    println!("    were installed and before any tunnel or agent ran (plain kernel routing).");
    println!("  {hbone}");
    println!("  CPU-s/GB: utime+stime of both tunnels over each iperf3 run / 10^9 bytes received.");
    println!(
        "  new conn: connect + GET (Connection: close) + full response, timed by our client in"
    );
    println!(
        "    the client pod, one at a time, {} requests after {WARMUP_REQUESTS} warm-ups.",
        options.requests
    );
    println!("  keep-alive: wrk -t1 -c1 --latency (one connection, one request in flight).");
    println!(
        "  {cores} cores shared by both tunnels, iperf3 client+server, wrk and the HTTP server:"
    );
    println!("    in-pod runs pay for that contention, the direct runs (no tunnels) do not.");
    Ok(())
}

/// Measures how busy the cores are for one second before we start, and warns when something
/// else is using them (it would skew every figure, the in-pod ones most).
pub(crate) fn warn_if_busy() {
    let before = cpu_times();
    thread::sleep(Duration::from_secs(1));
    let after = cpu_times();
    let busy = before.zip(after).map(|((idle0, total0), (idle1, total1))| {
        let total = total1.saturating_sub(total0).max(1);
        100.0 * (1.0 - idle1.saturating_sub(idle0) as f64 / total as f64)
    });
    match busy {
        Some(busy) if busy > 15.0 => println!(
            "WARNING: the cores were {busy:.0} % busy before we started (other processes): the figures will be skewed"
        ),
        Some(busy) => println!("cores {busy:.0} % busy in the second before the start"),
        None => println!("(cannot read /proc/stat: no check for other load)"),
    }
}

/// `(idle + iowait, total)` jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    // guest and guest_nice (fields 9, 10) are already counted in user and nice.
    Some((idle, fields.iter().take(8).sum()))
}

/// `nodetunnel-bench http-serve 10.77.2.10:8081` inside the server pod.
fn start_http_server(topo: &PodTopology) -> BenchResult<Reaped> {
    http::start_server(topo.ns("server"), (addr::SERVER, HTTP_PORT).into())
}

fn cpu_of(mesh: Option<&InpodMesh>) -> BenchResult<Option<f64>> {
    let Some(mesh) = mesh else { return Ok(None) };
    let mut total = 0.0;
    for pid in mesh.pids() {
        total += procstat::cpu_seconds(pid)?;
    }
    Ok(Some(total))
}

fn stats(mesh: &InpodMesh) -> BenchResult<Vec<ProcStats>> {
    Ok(mesh
        .pids()
        .into_iter()
        .map(ProcStats::read)
        .collect::<Result<_, _>>()?)
}

fn measure(topo: &PodTopology, options: Options, mesh: Option<&InpodMesh>) -> BenchResult<Figures> {
    let client = topo.ns("client");
    let settle = || thread::sleep(Duration::from_secs(1));
    let iperf_run = |streams| -> BenchResult<(iperf::Run, Option<f64>)> {
        let before = cpu_of(mesh)?;
        let run = iperf::client(
            client,
            addr::SERVER,
            addr::CLIENT,
            IPERF_PORT,
            options.seconds,
            streams,
        )?;
        let after = cpu_of(mesh)?;
        let cpu = before.zip(after).map(|(b, a)| a - b);
        println!(
            "  iperf3 -P {streams}: {:.2} Gbit/s{}",
            run.bits_per_second / 1e9,
            cpu.map_or(String::new(), |c| format!(", tunnels {c:.2} CPU-s"))
        );
        settle();
        Ok((run, cpu))
    };
    let (single, single_cpu) = iperf_run(1)?;
    let (multi, multi_cpu) = iperf_run(MULTI_STREAMS)?;

    let dst: SocketAddr = (addr::SERVER, HTTP_PORT).into();
    let keepalive = wrk::run(client, dst, 1, options.seconds)?;
    println!(
        "  wrk keep-alive: p50 {} p99 {}, {:.0} req/s",
        micros(keepalive.p50),
        micros(keepalive.p99),
        keepalive.requests_per_second
    );
    settle();
    let requests = options.requests;
    let times =
        client.run(move || http::requests_on_new_connections(dst, WARMUP_REQUESTS, requests))?;
    let (new_conn_p50, new_conn_p99) = (
        http::percentile(&times, 50.0),
        http::percentile(&times, 99.0),
    );
    println!(
        "  new connection per request: p50 {} p99 {}",
        micros(new_conn_p50),
        micros(new_conn_p99)
    );
    Ok(Figures {
        single,
        multi,
        single_cpu,
        multi_cpu,
        keepalive,
        new_conn_p50,
        new_conn_p99,
    })
}

/// Checks, from n2's access log, that the meshed runs really arrived over HBONE; returns a note.
fn check_hbone(mesh: &InpodMesh, options: Options) -> BenchResult<String> {
    let n2 = mesh.tunnel("n2");
    let count = |port: u16| {
        let dst = format!("{}:{port}", addr::SERVER);
        n2.access_lines(&[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("dst.addr", dst.as_str()),
        ])
        .len()
    };
    // iperf3: a control and a data connection for -P 1, a control and 8 for -P 8. HTTP: wrk's
    // connection and one per request (warm-ups included).
    let (want_iperf, want_http) = (
        2 + 1 + MULTI_STREAMS as usize,
        1 + WARMUP_REQUESTS + options.requests,
    );
    wait_until(Duration::from_secs(10), || {
        count(IPERF_PORT) >= want_iperf && count(HTTP_PORT) >= want_http
    });
    let (iperf, http) = (count(IPERF_PORT), count(HTTP_PORT));
    if iperf < want_iperf || http < want_http {
        return Err(format!(
            "n2 logged {iperf} inbound HBONE connections to :{IPERF_PORT} (want {want_iperf}) and {http} to :{HTTP_PORT} (want {want_http}); log tail:\n{}",
            n2.log_tail(20)
        )
        .into());
    }
    Ok(format!(
        "in-pod traffic checked: n2's tunnel logged {iperf} inbound HBONE connections to :{IPERF_PORT}, {http} to :{HTTP_PORT}."
    ))
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn print_table(
    options: Options,
    cores: usize,
    direct: &Figures,
    meshed: &Figures,
    idle: &[ProcStats],
    end: &[ProcStats],
) {
    let row = |metric: &str, d: &str, m: &str, delta: &str, target: &str, v: &str| {
        println!("{metric:<33} {d:>12} {m:>16} {delta:>10}  {target:<17} {v}");
    };
    println!(
        "\nin-pod vs direct, pod → pod across nodes, {} s runs, release build, {cores} cores",
        options.seconds
    );
    row("metric", "direct", "in-pod", "vs direct", "target", "met");
    println!("{}", "-".repeat(96));
    let gbit = |r: &iperf::Run| format!("{:.2} Gbit/s", r.bits_per_second / 1e9);
    let pct = |m: f64, d: f64| 100.0 * m / d;
    let single_pct = pct(meshed.single.bits_per_second, direct.single.bits_per_second);
    row(
        "iperf3, 1 stream",
        &gbit(&direct.single),
        &gbit(&meshed.single),
        &format!("{single_pct:.0} %"),
        "≥ 40 % of direct",
        verdict(single_pct >= 40.0),
    );
    let multi_pct = pct(meshed.multi.bits_per_second, direct.multi.bits_per_second);
    row(
        &format!("iperf3, {MULTI_STREAMS} streams"),
        &gbit(&direct.multi),
        &gbit(&meshed.multi),
        &format!("{multi_pct:.0} %"),
        "-",
        "",
    );
    for (label, run, cpu) in [
        ("1 stream", &meshed.single, meshed.single_cpu),
        ("8 streams", &meshed.multi, meshed.multi_cpu),
    ] {
        let per_gb = cpu.unwrap_or(f64::NAN) / (run.bytes / GB);
        row(
            &format!("CPU-s/GB, both tunnels, {label}"),
            "-",
            &format!("{per_gb:.2}"),
            "",
            "≤ 1.3",
            verdict(per_gb <= 1.3),
        );
    }
    let added = |m: Duration, d: Duration| {
        let us = (m.as_secs_f64() - d.as_secs_f64()) * 1e6;
        (us, format!("{us:+.0} µs"))
    };
    let (added_p50, added_p50_text) = added(meshed.keepalive.p50, direct.keepalive.p50);
    row(
        "keep-alive p50 (wrk, 1 conn)",
        &micros(direct.keepalive.p50),
        &micros(meshed.keepalive.p50),
        &added_p50_text,
        "added ≤ 50 µs",
        verdict(added_p50 <= 50.0),
    );
    row(
        "keep-alive p99",
        &micros(direct.keepalive.p99),
        &micros(meshed.keepalive.p99),
        &added(meshed.keepalive.p99, direct.keepalive.p99).1,
        "-",
        "",
    );
    row(
        "keep-alive requests/s",
        &format!("{:.0}", direct.keepalive.requests_per_second),
        &format!("{:.0}", meshed.keepalive.requests_per_second),
        &format!(
            "{:.0} %",
            pct(
                meshed.keepalive.requests_per_second,
                direct.keepalive.requests_per_second
            )
        ),
        "-",
        "",
    );
    row(
        "new connection per request p50",
        &micros(direct.new_conn_p50),
        &micros(meshed.new_conn_p50),
        &added(meshed.new_conn_p50, direct.new_conn_p50).1,
        "-",
        "",
    );
    row(
        "new connection per request p99",
        &micros(direct.new_conn_p99),
        &micros(meshed.new_conn_p99),
        &added(meshed.new_conn_p99, direct.new_conn_p99).1,
        "-",
        "",
    );
    let mib = |kib: u64| kib as f64 / MIB;
    let pair = |f: fn(&ProcStats) -> u64, stats: &[ProcStats]| {
        stats
            .iter()
            .map(|s| format!("{:.1}", mib(f(s))))
            .collect::<Vec<_>>()
            .join(" / ")
            + " MiB"
    };
    let idle_max = idle.iter().map(|s| mib(s.rss_kib)).fold(0.0, f64::max);
    row(
        "tunnel RSS idle, n1 / n2",
        "-",
        &pair(|s| s.rss_kib, idle),
        "",
        "≤ 16 MiB each",
        verdict(idle_max <= 16.0),
    );
    row(
        "tunnel RSS peak (VmHWM), n1 / n2",
        "-",
        &pair(|s| s.hwm_kib, end),
        "",
        "-",
        "",
    );
}
