//! `nodetunnel-bench policy`: the inbound HBONE connection rate of a workload with 100
//! authorization policies applying to it, against the same workload with none, in one run.
//!
//! Two-node dedicated-mode topology: a client on n1 (10.77.1.10) opens a new TCP connection per
//! request (`GET /`, `Connection: close`) to `nodetunnel-bench http-serve` on the server
//! (10.77.2.10:8081, n2), through n1's tunnel (15001) and n2's (15008): each connection is a new
//! HBONE CONNECT stream on n1's pooled connection to n2, and n2 authorizes each one. Measured
//! as connections per second, `--seconds` each with 1 and with 8 client threads.
//!
//! The two configurations differ only in n2's mesh file (`LOCAL_XDS_PATH`, read once at start,
//! so n2's tunnel is restarted for each): none, or 100 policies applying to the server (from
//! `bench/policy_set.rs`): 99 DENY policies that do not match the client, a third each
//! selected by the server, its namespace and global, and last an ALLOW matching the client's
//! principal, so every policy is evaluated and the decision is allow. n1 keeps a file without
//! policies (they would apply only to its inbound side, unused here). Before each phase the
//! tunnel's `/debug/authorize` must report that decision with that many policies; after it,
//! n2's access log must hold an inbound HBONE line per request. The two configurations
//! alternate (`--rounds` times each, in ABBA order) and the medians are compared. The direct
//! rate (no capture, no tunnels, same namespaces) is measured first, for context.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nodetunnel_testbed::{
    addr, env_refs, eventually::wait_until, generate_ca, require_namespaces, sibling_binary,
    tunnel_env, Ca, Capture, Mesh, MeshConfig, Netns, Topology, Tunnel,
};

use crate::policy_set::{self, Action, Spec, Target};
use crate::{http, BenchResult};

const USAGE: &str = "usage: nodetunnel-bench policy [--seconds N] [--rounds N]";
const HTTP_PORT: u16 = 8081;
const POLICIES: usize = 100;
const CONCURRENCY: [usize; 2] = [1, 8];
const WARMUP_REQUESTS: usize = 200;
/// Failures tolerated in a warm-up: n1's pooled connection to the n2 tunnel just restarted may
/// fail one stream before n1 notices and dials anew. Timed runs tolerate none.
const WARMUP_FAILURES: usize = 3;
const TARGET: Target<'static> = Target {
    namespace: "default",
    client_principal: "cluster.local/ns/default/sa/client",
    client_cidr: "10.77.1.0/24",
    port: HTTP_PORT,
};

struct PolicyOptions {
    seconds: u64,
    rounds: usize,
}

fn parse(args: &[String]) -> BenchResult<PolicyOptions> {
    let mut o = PolicyOptions {
        seconds: 5,
        rounds: 3,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number\n{USAGE}"))?;
        match flag.as_str() {
            "--seconds" => o.seconds = value as u64,
            "--rounds" => o.rounds = value,
            _ => return Err(format!("unexpected argument {flag:?}\n{USAGE}").into()),
        }
    }
    Ok(o)
}

/// One configuration of n2's tunnel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    NoPolicies,
    Policies,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::NoPolicies => "no policies",
            Config::Policies => "100 policies",
        }
    }
}

pub fn run(args: &[String]) -> BenchResult {
    let options = parse(args)?;
    require_namespaces()?;
    let bin = sibling_binary("nodetunnel")?;
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let topo = Topology::two_node("bench-policy", Capture::NONE)?;
    println!(
        "policy bench: client 10.77.1.10 (n1) → server 10.77.2.10:{HTTP_PORT} (n2), a new connection per request, {} s per run, {cores} cores",
        options.seconds
    );
    crate::inpod::warn_if_busy();
    let dst: SocketAddr = (addr::SERVER, HTTP_PORT).into();
    let _server = http::start_server(topo.ns("n2"), dst)?;
    let seconds = Duration::from_secs(options.seconds);

    println!("direct (no capture, no tunnels) ...");
    let mut direct = Vec::new();
    for c in CONCURRENCY {
        warm_up(topo.ns("n1"), dst)?;
        let r = rate(topo.ns("n1"), dst, c, seconds)?;
        println!("  {c} client(s): {:.0} conn/s", r.per_second());
        direct.push(r.per_second());
    }

    let ca = topo.path("ca");
    fs::create_dir_all(&ca)?;
    generate_ca(&bin, &ca)?;
    let plain_mesh = topo.path("mesh-none.yaml");
    let policy_mesh = topo.path("mesh-policies.yaml");
    let allowing = write_meshes(&plain_mesh, &policy_mesh)?;
    for node in topo.nodes() {
        node.set_capture(Capture::ALL)?;
    }
    let start = |node: &str, mesh: &Path| {
        let env = tunnel_env(node, Mesh::File(mesh), Ca::Dir(&ca));
        topo.start_tunnel(node, &bin, &env_refs(&env))
    };
    let _t1 = start("n1", &plain_mesh)?;

    // rates[config][concurrency index] = one figure per round.
    let mut rates = [
        vec![Vec::new(); CONCURRENCY.len()],
        vec![Vec::new(); CONCURRENCY.len()],
    ];
    for round in 0..options.rounds {
        let order = match round % 2 {
            0 => [Config::NoPolicies, Config::Policies],
            _ => [Config::Policies, Config::NoPolicies],
        };
        for config in order {
            let mesh = match config {
                Config::NoPolicies => &plain_mesh,
                Config::Policies => &policy_mesh,
            };
            let t2 = start("n2", mesh)?;
            check_decision(&t2, config, &allowing)?;
            let mut requests = warm_up(topo.ns("n1"), dst)?;
            print!("round {} {:>12}:", round + 1, config.label());
            for (i, c) in CONCURRENCY.into_iter().enumerate() {
                let r = rate(topo.ns("n1"), dst, c, seconds)?;
                print!("  {c} client(s) {:.0} conn/s", r.per_second());
                requests += r.requests;
                rates[config as usize][i].push(r.per_second());
            }
            println!();
            check_hbone(&t2, requests)?;
            drop(t2);
        }
    }

    println!();
    println!(
        "inbound HBONE connection rate, new connection per request, median of {} rounds of {} s, release build, {cores} cores",
        options.rounds, options.seconds
    );
    println!(
        "{:>9}  {:>12}  {:>14}  {:>14}  {:>8}",
        "clients", "direct", "no policies", "100 policies", "ratio"
    );
    for (i, c) in CONCURRENCY.into_iter().enumerate() {
        let none = median(&rates[Config::NoPolicies as usize][i]);
        let with = median(&rates[Config::Policies as usize][i]);
        println!(
            "{c:>9}  {:>7.0} c/s  {none:>9.0} c/s  {with:>9.0} c/s  {:>7.1} %",
            direct[i],
            100.0 * with / none
        );
    }
    println!("\nnotes:");
    println!("  ratio = median with 100 policies / median with none (100 % = no cost).");
    println!(
        "  100 policies: 99 DENY not matching the client (33 selected by the server, 33 in its"
    );
    println!(
        "    namespace, 33 global) + the ALLOW {allowing} matching its principal, evaluated last;"
    );
    println!(
        "    checked before each phase with n2's /debug/authorize (decision allow, 100 policies)."
    );
    println!(
        "  n2's tunnel restarts for each phase (the file is read once); {WARMUP_REQUESTS} untimed requests first."
    );
    println!("  client, http server and both tunnels share the {cores} cores.");
    Ok(())
}

/// n1's file (no policies) and n2's with the 100 policies; returns the allowing policy's key.
fn write_meshes(plain: &Path, with_policies: &Path) -> BenchResult<String> {
    MeshConfig::standard(HTTP_PORT).write(plain)?;
    let set = policy_set::generate(
        Spec {
            count: POLICIES,
            others: Action::Deny,
            last_allows_client: true,
        },
        &TARGET,
    );
    // The policies come as local-config YAML (the same text the decision micro-bench loads);
    // the server lists the selector ones, and the file gets them as its `policies:` section.
    let mut mesh = MeshConfig::standard(HTTP_PORT);
    if !mesh.policies.is_empty() {
        return Err("MeshConfig::standard now carries policies: the bench expects none".into());
    }
    mesh.workload_mut("server").authorization_policies = set.selected.clone();
    let mut yaml = mesh.to_yaml();
    yaml.push_str(&set.yaml);
    fs::write(with_policies, yaml)?;
    set.allowing
        .ok_or_else(|| "the policy set has no allowing policy".into())
}

/// n2's own account of the decision for the client's connections: allow, by the ALLOW policy
/// when the policies are loaded, with the expected number of policies considered.
fn check_decision(t2: &Tunnel, config: Config, allowing: &str) -> BenchResult {
    let query = format!(
        "/debug/authorize?source_identity=spiffe%3A%2F%2F{}&source_ip={}&destination={}&port={HTTP_PORT}",
        TARGET.client_principal.replace('/', "%2F"),
        addr::CLIENT,
        addr::SERVER
    );
    let body = t2.admin_get(&query)?;
    let answer: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("/debug/authorize is not JSON ({e}): {body:.300}"))?;
    let (want_policies, want_reason) = match config {
        Config::NoPolicies => (0, "no ALLOW policy applies".to_string()),
        Config::Policies => (POLICIES, format!("ALLOW policy {allowing} matched")),
    };
    let policies = answer["policies"].as_array().map_or(0, Vec::len);
    let decision = answer["decision"].as_str().unwrap_or_default();
    let reason = answer["reason"].as_str().unwrap_or_default();
    if decision != "allow" || policies != want_policies || !reason.contains(&want_reason) {
        return Err(format!(
            "n2 ({}): /debug/authorize says {decision:?} ({reason}) with {policies} policies; want allow ({want_reason}) with {want_policies}",
            config.label()
        )
        .into());
    }
    Ok(())
}

/// Every request of the phase was an inbound HBONE connection at n2 (access lines are written
/// when a connection ends, so this waits a little).
fn check_hbone(t2: &Tunnel, requests: usize) -> BenchResult {
    let dst = format!("{}:{HTTP_PORT}", addr::SERVER);
    let fields = [
        ("direction", "inbound"),
        ("protocol", "HBONE"),
        ("dst.addr", dst.as_str()),
    ];
    let mut logged = 0;
    wait_until(Duration::from_secs(10), || {
        logged = t2.access_lines(&fields).len();
        logged >= requests
    });
    if logged < requests {
        return Err(format!(
            "n2 logged {logged} inbound HBONE connections to {dst}, the client made {requests}; log tail:\n{}",
            t2.log_tail(20)
        )
        .into());
    }
    Ok(())
}

/// [`WARMUP_REQUESTS`] untimed requests, one at a time; returns how many succeeded.
fn warm_up(ns: &Netns, dst: SocketAddr) -> BenchResult<usize> {
    ns.run(move || {
        let mut failures = Vec::new();
        let mut ok = 0;
        while ok < WARMUP_REQUESTS {
            match http::request_from(addr::CLIENT, dst) {
                Ok(_) => ok += 1,
                Err(e) if failures.len() < WARMUP_FAILURES => failures.push(e.to_string()),
                Err(e) => {
                    failures.push(e.to_string());
                    return Err(format!("warm-up requests to {dst} fail: {failures:?}"));
                }
            }
        }
        Ok(ok)
    })
    .map_err(Into::into)
}

/// Requests completed by a run, and how long it took.
struct Rate {
    requests: usize,
    elapsed: Duration,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` threads in `ns`, each making requests one after another on new connections
/// until `duration` has passed. Any failed request fails the run.
fn rate(ns: &Netns, dst: SocketAddr, concurrency: usize, duration: Duration) -> BenchResult<Rate> {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            ns.spawn(move || -> Result<usize, String> {
                let mut done = 0;
                while Instant::now() < deadline {
                    http::request_from(addr::CLIENT, dst)
                        .map_err(|e| format!("request {} to {dst}: {e}", done + 1))?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut requests = 0;
    for worker in workers {
        requests += worker
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(Rate {
        requests,
        elapsed: started.elapsed(),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
