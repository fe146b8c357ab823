//! `nodetunnel-bench throughput [--seconds N]`: single-stream iperf3 throughput from the client
//! pod (10.77.1.10) to the server pod (10.77.2.10) on the two-node topology, first directly
//! (no capture rules, no tunnels), then through both tunnels (HBONE); prints both and the ratio.
//! Run it through `bench/throughput.sh`, which builds the release binaries first.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use nodetunnel_testbed::{
    addr, cleanup_on_signals, env_refs, eventually::wait_until, generate_ca, require_namespaces,
    sibling_binary, tunnel_env, Ca, Capture, MeshConfig, Netns, Topology,
};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const IPERF_PORT: u16 = 5201;

fn main() -> ExitCode {
    cleanup_on_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("throughput") => parse_seconds(&args[1..]).and_then(throughput),
        _ => Err("usage: nodetunnel-bench throughput [--seconds N]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_seconds(args: &[String]) -> BenchResult<u32> {
    match args {
        [] => Ok(10),
        [flag, n] if flag == "--seconds" => Ok(n
            .parse()
            .map_err(|_| format!("--seconds {n}: not a number"))?),
        _ => Err(format!("unexpected arguments {args:?}").into()),
    }
}

/// Kills (SIGKILL) and reaps a helper process (the iperf3 server) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

    let _iperf_server = start_iperf_server(topo.ns("n2"))?;

    println!("direct (no capture, no tunnels), {seconds} s single stream ...");
    let direct = iperf_client(topo.ns("n1"), seconds)?;
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
        let env = tunnel_env(node, &config, Ca::Dir(&ca));
        topo.start_tunnel(node, &bin, &env_refs(&env))
    };
    let t2 = start("n2")?;
    let t1 = start("n1")?;

    println!("through nodetunnel (HBONE: n1:15001 → mTLS h2 CONNECT → n2:15008), {seconds} s single stream ...");
    let tunneled = iperf_client(topo.ns("n1"), seconds)?;
    // iperf3 opens a control and a data connection; both must have been carried over HBONE.
    let dst = format!("{}:{IPERF_PORT}", addr::SERVER);
    let fields = [("dst", dst.as_str()), ("protocol", "HBONE")];
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

fn start_iperf_server(ns: &Netns) -> BenchResult<Reaped> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "iperf3",
            "-s",
            "-B",
            &addr::SERVER.to_string(),
        ])
        .args(["-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Reaped(child);
    let listening = wait_until(Duration::from_secs(5), || {
        ns.exec("ss", &["-Hltn", &format!("( sport = :{IPERF_PORT} )")])
            .is_ok_and(|out| !out.trim().is_empty())
    });
    if !listening {
        return Err("iperf3 server did not start listening".into());
    }
    Ok(server)
}

/// Runs `iperf3 -c 10.77.2.10 -B 10.77.1.10 -t <seconds> -J` in `ns`; returns received bit/s.
fn iperf_client(ns: &Netns, seconds: u32) -> BenchResult<f64> {
    let out = ns.exec(
        "iperf3",
        &[
            "-c",
            &addr::SERVER.to_string(),
            "-B",
            &addr::CLIENT.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    received_bits_per_second(&out).ok_or_else(|| {
        format!("no end.sum_received.bits_per_second in iperf3 output:\n{out}").into()
    })
}

/// `end.sum_received.bits_per_second` from iperf3's JSON, without a JSON library.
fn received_bits_per_second(json: &str) -> Option<f64> {
    let end = json.rfind("\"sum_received\"")?;
    let rest = &json[end..];
    let key = "\"bits_per_second\":";
    let at = rest.find(key)? + key.len();
    let number: String = rest[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::received_bits_per_second;

    #[test]
    fn parses_iperf3_json() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 1.5e9}, "sum_received": {"seconds": 10, "bytes": 5, "bits_per_second":	12345678901.5, "sender": true}}}"#;
        assert_eq!(received_bits_per_second(json), Some(12345678901.5));
    }
}
