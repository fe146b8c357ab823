//! `nodetunnel-bench inpod`: pod client (10.77.1.10, node n1) → pod server (10.77.2.10, node
//! n2) on the in-pod topology, through two shared-mode tunnels, against the direct path of the
//! same pods in the same run.
//!
//! Direct is measured first: the topology is built without the in-pod rules and no tunnel or
//! agent runs, so packets go pod → n1 → n2 → pod through the kernel alone, over the very veths,
//! routes and namespaces the meshed runs use next. Then the rules are installed in the mesh
//! pods, an [`InpodMesh`] is started (agents enrol the pods), and every measurement repeats.
//! Each path is measured `--runs` times (default 3); the table shows the median of each figure.
//!
//! - iperf3, 1 and 8 streams, `--seconds` each: Gbit/s and bytes from `end.sum_received`;
//! - tunnel CPU: utime + stime of each tunnel process (`/proc/<pid>/stat`) across each iperf3
//!   run, per 10^9 bytes received by the iperf3 server: n1 (client side), n2 (server side), both;
//! - keep-alive latency: `wrk -t1 -c1 --latency` against `nodetunnel-bench http-serve` in the
//!   server pod (one connection, one request at a time: unloaded latency);
//! - connection-per-request latency: our own client in the client pod times connect + `GET`
//!   with `Connection: close` + the whole response, one at a time, after 100 untimed warm-ups;
//! - tunnel memory: VmRSS once the mesh is set up (before any meshed traffic), VmHWM after the
//!   traffic runs;
//! - memory per idle connection: after the traffic runs, `--idle` connections (default 10,000)
//!   are opened through both tunnels to a holder in the server pod and each answered once
//!   ([`idle`](crate::idle)); the RSS growth of each tunnel over them, per connection (after
//!   100 warm-up ones, so pools and certificates are in the baseline). They are closed again
//!   and the bench waits until both tunnels let go of them;
//! - `--profile DIR`: after everything else, one more single-stream run with `perf record` on
//!   each tunnel; the top of each profile is printed ([`profile`](crate::profile)).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nodetunnel_testbed::procstat::{self, ProcStats};
use nodetunnel_testbed::{
    addr, apply_inpod_rules, eventually::wait_until, generate_ca, require_namespaces,
    sibling_binary, Ca, InpodMesh, InpodRules, Mesh, MeshBins, MeshConfig, PodTopology,
    ZDS_AGENT_BIN,
};

use crate::iperf::{self, Reaped};
use crate::{http, idle, profile, wrk, BenchResult, Options, IPERF_PORT};

const HTTP_PORT: u16 = 8081;
const HOLD_PORT: u16 = 8082;
const WARMUP_REQUESTS: usize = 100;
/// Connections opened (and kept) before the idle-memory baseline is read, so the first HBONE
/// connection, certificates and pools are already in it.
const IDLE_WARMUP: usize = 100;
/// The tunnel's default `POOL_MAX_STREAMS_PER_CONNECTION` (the bench leaves it unset).
const POOL_STREAMS_PER_CONNECTION: usize = 100;
/// Sockets besides the pooled ones that may still be closing when the idle figure is done.
const IDLE_FD_SLACK: usize = 50;
const MULTI_STREAMS: u32 = 8;
const GB: f64 = 1e9;
const MIB: f64 = 1024.0;
/// The tunnels' sides, in [`InpodMesh::pids`] order.
const SIDES: [&str; 2] = ["n1", "n2"];

/// The figures of one run of one path.
struct Figures {
    single: iperf::Run,
    multi: iperf::Run,
    /// CPU seconds of each tunnel (n1, n2) during the single- and multi-stream runs (meshed
    /// only).
    single_cpu: Option<Vec<f64>>,
    multi_cpu: Option<Vec<f64>>,
    keepalive: wrk::Report,
    new_conn_p50: Duration,
    new_conn_p99: Duration,
}

/// RSS growth of each tunnel per idle connection, KiB.
struct IdleMemory {
    connections: usize,
    per_connection_kib: Vec<f64>,
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
        "in-pod bench: pod client 10.77.1.10 (n1) → pod server 10.77.2.10 (n2), {} s per run, {} runs per path, {cores} cores",
        options.seconds, options.runs
    );
    warn_if_busy();

    let topo = PodTopology::two_node("bench-inpod", InpodRules::Skip)?;
    let server_ns = topo.ns("server");
    let _iperf = iperf::start_server(server_ns, addr::SERVER, IPERF_PORT)?;
    let _http = start_http_server(&topo)?;

    let mut direct = Vec::new();
    for run in 1..=options.runs {
        println!(
            "direct (run {run} of {}): same pods, no in-pod rules, no tunnels ...",
            options.runs
        );
        direct.push(measure(&topo, &options, None)?);
    }

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
    let tunnel_env: Vec<(&str, &str)> = options
        .tunnel_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mesh = InpodMesh::start(&topo, bins, Mesh::File(&config), Ca::Dir(&ca), &tunnel_env)?;
    if !tunnel_env.is_empty() {
        println!("in-pod: tunnels run with {:?}", options.tunnel_env);
    }
    thread::sleep(Duration::from_millis(500));
    let idle = stats(&mesh)?;
    println!(
        "in-pod: rules installed, tunnels {:?} ready, pods enrolled by their agents ...",
        mesh.pids()
    );
    let mut meshed = Vec::new();
    for run in 1..=options.runs {
        println!("in-pod (run {run} of {}):", options.runs);
        meshed.push(measure(&topo, &options, Some(&mesh))?);
    }
    // Read before the idle run: freed heap stays in the process (malloc keeps it), so after
    // 10,000 connections the peak would be theirs, not the traffic runs'.
    let end = stats(&mesh)?;
    let idle_memory = measure_idle_memory(&topo, &mesh, options.idle)?;
    let profiles = match &options.profile {
        Some(dir) => profile_single_stream(&topo, &mesh, &options, dir)?,
        None => Vec::new(),
    };
    let hbone = check_hbone(&mesh, &options)?;

    print_table(&options, cores, &direct, &meshed, &idle_memory, &idle, &end);
    println!("\nnotes:");
    println!(
        "  direct = the same pod netns, veths and routes, measured first, before the in-pod rules"
    );
    println!("    were installed and before any tunnel or agent ran (plain kernel routing).");
    println!("  {hbone}");
    println!(
        "  every figure is the median of {} runs; CPU-s/GB: utime+stime of a tunnel over each",
        options.runs
    );
    println!("    iperf3 run / 10^9 bytes received (n1 sends into HBONE, n2 receives from it).");
    println!(
        "  new conn: connect + GET (Connection: close) + full response, timed by our client in"
    );
    println!(
        "    the client pod, one at a time, {} requests after {WARMUP_REQUESTS} warm-ups.",
        options.requests
    );
    println!("  keep-alive: wrk -t1 -c1 --latency (one connection, one request in flight).");
    println!(
        "  idle: RSS growth of each tunnel over {} connections held end to end (after {IDLE_WARMUP} warm-up ones).",
        idle_memory.connections
    );
    println!(
        "  {cores} cores shared by both tunnels, iperf3 client+server, wrk and the HTTP server:"
    );
    println!("    in-pod runs pay for that contention, the direct runs (no tunnels) do not.");
    for profile in profiles {
        println!("\n{profile}");
    }
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

/// CPU seconds used so far by each tunnel, in [`SIDES`] order.
fn cpu_of(mesh: Option<&InpodMesh>) -> BenchResult<Option<Vec<f64>>> {
    let Some(mesh) = mesh else { return Ok(None) };
    let seconds = mesh
        .pids()
        .into_iter()
        .map(procstat::cpu_seconds)
        .collect::<Result<_, _>>()?;
    Ok(Some(seconds))
}

fn stats(mesh: &InpodMesh) -> BenchResult<Vec<ProcStats>> {
    Ok(mesh
        .pids()
        .into_iter()
        .map(ProcStats::read)
        .collect::<Result<_, _>>()?)
}

fn measure(
    topo: &PodTopology,
    options: &Options,
    mesh: Option<&InpodMesh>,
) -> BenchResult<Figures> {
    let client = topo.ns("client");
    let settle = || thread::sleep(Duration::from_secs(1));
    let iperf_run = |streams| -> BenchResult<(iperf::Run, Option<Vec<f64>>)> {
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
        let cpu: Option<Vec<f64>> = before
            .zip(after)
            .map(|(b, a)| a.iter().zip(&b).map(|(a, b)| a - b).collect());
        let per_side = |cpu: &Vec<f64>| {
            let sides: Vec<String> = cpu.iter().map(|c| format!("{c:.2}")).collect();
            format!(", tunnels n1 / n2 {} CPU-s", sides.join(" / "))
        };
        println!(
            "  iperf3 -P {streams}: {:.2} Gbit/s{}",
            run.bits_per_second / 1e9,
            cpu.as_ref().map_or(String::new(), per_side)
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
fn check_hbone(mesh: &InpodMesh, options: &Options) -> BenchResult<String> {
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
    // Per run, iperf3: a control and a data connection for -P 1, a control and 8 for -P 8
    // (plus one -P 1 run when profiling). HTTP: wrk's connection and one per request
    // (warm-ups included).
    let profiled = if options.profile.is_some() { 2 } else { 0 };
    let (want_iperf, want_http) = (
        options.runs * (2 + 1 + MULTI_STREAMS as usize) + profiled,
        options.runs * (1 + WARMUP_REQUESTS + options.requests),
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

/// Holds `count` idle connections through both tunnels (after [`IDLE_WARMUP`] warm-up ones)
/// and returns each tunnel's RSS growth per connection; closes them, waits until both tunnels
/// have let go of them.
fn measure_idle_memory(
    topo: &PodTopology,
    mesh: &InpodMesh,
    count: usize,
) -> BenchResult<IdleMemory> {
    for pid in mesh.pids() {
        let limit = open_files_limit(pid)?;
        if limit < (count + IDLE_WARMUP + 1000) as u64 {
            return Err(format!(
                "tunnel {pid} may open only {limit} files: too few for --idle {count} (raise the limit or lower --idle)"
            )
            .into());
        }
    }
    let dst: SocketAddr = (addr::SERVER, HOLD_PORT).into();
    // The holder never closes its side: a client's close only half-closes the path (the
    // tunnels forward the FIN and keep the other direction open, as TCP allows), so the
    // connections go away only when the holder is stopped after the clients closed.
    let holder = idle::start_server(topo.ns("server"), dst)?;
    let client = topo.ns("client");
    println!("in-pod: opening {count} idle connections through both tunnels ...");
    let warm = client.run(move || idle::open_held(dst, IDLE_WARMUP))?;
    thread::sleep(Duration::from_millis(500));
    let before = stats(mesh)?;
    let fds_before: Vec<usize> = before.iter().map(|s| s.fds).collect();
    let held = client.run(move || idle::open_held(dst, count))?;
    thread::sleep(Duration::from_secs(1));
    let after = stats(mesh)?;
    let per_connection_kib: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.rss_kib as f64 - b.rss_kib as f64) / count as f64)
        .collect();
    for ((side, b), a) in SIDES.iter().zip(&before).zip(&after) {
        println!(
            "  {side}: RSS {:.1} → {:.1} MiB, {} → {} fds",
            b.rss_kib as f64 / MIB,
            a.rss_kib as f64 / MIB,
            b.fds,
            a.fds
        );
    }
    drop((held, warm));
    thread::sleep(Duration::from_millis(500));
    drop(holder);
    let closing = Instant::now();
    // The client tunnel's pool keeps the HBONE connections it opened for the held streams
    // (`POOL_UNUSED_RELEASE_TIMEOUT`, 300 s by default), and the server tunnel their other
    // ends: one socket each per `POOL_MAX_STREAMS_PER_CONNECTION` streams.
    let pooled = (count + IDLE_WARMUP).div_ceil(POOL_STREAMS_PER_CONNECTION);
    let settled = wait_until(Duration::from_secs(120), || {
        mesh.pids()
            .into_iter()
            .zip(&fds_before)
            .all(|(pid, before)| {
                procstat::fd_count(pid).is_ok_and(|fds| {
                    fds <= before.saturating_sub(IDLE_WARMUP) + pooled + IDLE_FD_SLACK
                })
            })
    });
    if !settled {
        let now: Vec<String> = mesh
            .pids()
            .into_iter()
            .map(|pid| procstat::fd_count(pid).map_or("?".into(), |n| n.to_string()))
            .collect();
        return Err(format!(
            "the tunnels still hold the idle connections 120 s after they were closed: fds n1 / n2 {} (before the warm-up ones closed: {fds_before:?})",
            now.join(" / ")
        )
        .into());
    }
    println!(
        "  closed: both tunnels let go of them in {:.1} s",
        closing.elapsed().as_secs_f64()
    );
    Ok(IdleMemory {
        connections: count,
        per_connection_kib,
    })
}

/// The soft `Max open files` of `pid` (`/proc/<pid>/limits`).
fn open_files_limit(pid: u32) -> BenchResult<u64> {
    let path = format!("/proc/{pid}/limits");
    let limits = fs::read_to_string(&path)?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| {
            soft.parse()
                .ok()
                .or((soft == "unlimited").then_some(u64::MAX))
        })
        .ok_or_else(|| format!("no open-file limit in {path}").into())
}

/// One more single-stream iperf3 run with `perf record` on each tunnel; the top of each
/// profile.
fn profile_single_stream(
    topo: &PodTopology,
    mesh: &InpodMesh,
    options: &Options,
    dir: &Path,
) -> BenchResult<Vec<String>> {
    println!("profile: one more iperf3 -P 1 run with perf record on each tunnel ...");
    let recordings = SIDES
        .iter()
        .zip(mesh.pids())
        .map(|(side, pid)| profile::record(dir, side, pid, options.seconds))
        .collect::<BenchResult<Vec<_>>>()?;
    iperf::client(
        topo.ns("client"),
        addr::SERVER,
        addr::CLIENT,
        IPERF_PORT,
        options.seconds,
        1,
    )?;
    recordings.into_iter().map(|r| r.finish()).collect()
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median over runs of one figure.
fn median_of(runs: &[Figures], figure: impl Fn(&Figures) -> f64) -> f64 {
    median(runs.iter().map(figure).collect())
}

fn median_duration(runs: &[Figures], figure: impl Fn(&Figures) -> Duration) -> Duration {
    Duration::from_secs_f64(median_of(runs, |f| figure(f).as_secs_f64()).max(0.0))
}

fn print_table(
    options: &Options,
    cores: usize,
    direct: &[Figures],
    meshed: &[Figures],
    idle_memory: &IdleMemory,
    idle: &[ProcStats],
    end: &[ProcStats],
) {
    let row = |metric: &str, d: &str, m: &str, delta: &str, target: &str, v: &str| {
        println!("{metric:<36} {d:>12} {m:>18} {delta:>10}  {target:<17} {v}");
    };
    println!(
        "\nin-pod vs direct, pod → pod across nodes, medians of {} runs of {} s, release build, {cores} cores",
        options.runs, options.seconds
    );
    row("metric", "direct", "in-pod", "vs direct", "target", "met");
    println!("{}", "-".repeat(104));
    let gbit = |bits: f64| format!("{:.2} Gbit/s", bits / 1e9);
    let pct = |m: f64, d: f64| 100.0 * m / d;
    for (label, run, target) in [
        (
            "1 stream",
            (|f: &Figures| f.single) as fn(&Figures) -> iperf::Run,
            50.0,
        ),
        ("8 streams", |f: &Figures| f.multi, 30.0),
    ] {
        let (d, m) = (
            median_of(direct, |f| run(f).bits_per_second),
            median_of(meshed, |f| run(f).bits_per_second),
        );
        let ratio = pct(m, d);
        row(
            &format!("iperf3, {label}"),
            &gbit(d),
            &gbit(m),
            &format!("{ratio:.0} %"),
            &format!("≥ {target:.0} % of direct"),
            verdict(ratio >= target),
        );
    }
    type Cpu = fn(&Figures) -> Option<&Vec<f64>>;
    for (label, run, cpu, target) in [
        (
            "1 stream",
            (|f: &Figures| f.single) as fn(&Figures) -> iperf::Run,
            (|f: &Figures| f.single_cpu.as_ref()) as Cpu,
            1.2,
        ),
        (
            "8 streams",
            |f: &Figures| f.multi,
            |f: &Figures| f.multi_cpu.as_ref(),
            1.4,
        ),
    ] {
        let per_gb = |side: Option<usize>| {
            median_of(meshed, |f| {
                let seconds = cpu(f).map_or(f64::NAN, |c| match side {
                    Some(i) => c.get(i).copied().unwrap_or(f64::NAN),
                    None => c.iter().sum(),
                });
                seconds / (run(f).bytes / GB)
            })
        };
        let both = per_gb(None);
        row(
            &format!("CPU-s/GB, both tunnels, {label}"),
            "-",
            &format!("{both:.2}"),
            "",
            &format!("≤ {target}"),
            verdict(both <= target),
        );
        let sides: Vec<String> = (0..SIDES.len())
            .map(|i| format!("{:.2}", per_gb(Some(i))))
            .collect();
        row(
            &format!("CPU-s/GB, n1 / n2, {label}"),
            "-",
            &sides.join(" / "),
            "",
            "-",
            "",
        );
    }
    let added = |m: Duration, d: Duration| {
        let us = (m.as_secs_f64() - d.as_secs_f64()) * 1e6;
        (us, format!("{us:+.0} µs"))
    };
    /// A latency row: its label, the figure, and the most it may add over direct (µs).
    type LatencyRow = (&'static str, fn(&Figures) -> Duration, Option<f64>);
    let latency_rows: [LatencyRow; 4] = [
        (
            "keep-alive p50 (wrk, 1 conn)",
            |f| f.keepalive.p50,
            Some(45.0),
        ),
        ("keep-alive p99", |f| f.keepalive.p99, None),
        (
            "new connection per request p50",
            |f| f.new_conn_p50,
            Some(300.0),
        ),
        ("new connection per request p99", |f| f.new_conn_p99, None),
    ];
    for (label, figure, target) in latency_rows {
        let (d, m) = (
            median_duration(direct, figure),
            median_duration(meshed, figure),
        );
        let (us, text) = added(m, d);
        row(
            label,
            &micros(d),
            &micros(m),
            &text,
            &target.map_or("-".into(), |t| format!("added ≤ {t:.0} µs")),
            target.map_or("", |t| verdict(us <= t)),
        );
    }
    let (d, m) = (
        median_of(direct, |f| f.keepalive.requests_per_second),
        median_of(meshed, |f| f.keepalive.requests_per_second),
    );
    row(
        "keep-alive requests/s",
        &format!("{d:.0}"),
        &format!("{m:.0}"),
        &format!("{:.0} %", pct(m, d)),
        "-",
        "",
    );
    let per_conn: Vec<String> = idle_memory
        .per_connection_kib
        .iter()
        .map(|k| format!("{k:.1}"))
        .collect();
    let worst = idle_memory
        .per_connection_kib
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    row(
        &format!("RSS per idle conn ({}), n1 / n2", idle_memory.connections),
        "-",
        &format!("{} KiB", per_conn.join(" / ")),
        "",
        "≤ 4 KiB each",
        verdict(worst <= 4.0),
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
    let max = |f: fn(&ProcStats) -> u64, stats: &[ProcStats]| {
        stats.iter().map(|s| mib(f(s))).fold(0.0, f64::max)
    };
    // "No worse" than before issue 14's work: 10.7 / 10.5 MiB idle, 22.0 / 22.9 MiB peak.
    row(
        "tunnel RSS idle, n1 / n2",
        "-",
        &pair(|s| s.rss_kib, idle),
        "",
        "≤ 11 MiB each",
        verdict(max(|s| s.rss_kib, idle) <= 11.0),
    );
    row(
        "tunnel RSS peak (traffic runs), n1 / n2",
        "-",
        &pair(|s| s.hwm_kib, end),
        "",
        "≤ 23 MiB each",
        verdict(max(|s| s.hwm_kib, end) <= 23.0),
    );
}
