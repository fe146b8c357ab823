//! The cost of one authorization decision (`nodetunnel::authz::authorize`) with 0, 1, 100 and
//! 1,000 policies applying to the destination workload, for a plaintext and an mTLS client.
//!
//!   cargo bench --bench policy_decision
//!
//! Scenarios (policies from `bench/policy_set.rs`, loaded with the daemon's own file loader):
//! - `deny, none match`: N DENY policies, none matching, and no ALLOW: every policy is
//!   evaluated and the connection is allowed (the worst case for a DENY-only set);
//! - `allow, last matches`: N ALLOW policies of which only the last evaluated matches: every
//!   policy is evaluated and the last one allows.
//!
//! Each figure is the median over many batches of ns per decision (each batch a few ms of
//! back-to-back decisions on `black_box`ed inputs, so the policies sit in L1/L2), with the
//! 10th–90th percentile spread; "mTLS cold" times single decisions, each after a walk over a
//! buffer larger than L2, as in the daemon where a connection's TLS and HTTP/2 work runs
//! between two decisions.
//! Run without `--bench` (as `cargo test --benches` does), it only checks each scenario's
//! decision and runs a handful of iterations: measured, never asserted.

mod policy_set;

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodetunnel::authz::{authorize, AllowReason, ConnectionInfo, Decision};
use nodetunnel::identity::Identity;
use nodetunnel::state::{load_str, Defaults, Store, Workload};

use policy_set::{Action, PolicySet, Spec, Target};

const SERVER_UID: &str = "cluster1//v1/Pod/default/server";
const CLIENT_IP: &str = "10.77.1.10";
const SERVER_ADDR: &str = "10.77.2.10:8080";
const TARGET: Target<'static> = Target {
    namespace: "default",
    client_principal: "cluster.local/ns/default/sa/client",
    client_cidr: "10.77.1.0/24",
    port: 8080,
};

/// Batches per figure, and the wall time one batch aims at.
const BATCHES: usize = 201;
const BATCH_TIME: Duration = Duration::from_millis(2);
/// Walked before each "cold" decision: larger than this machine's L2 (2 MiB per core) and
/// most L2s, not than a server's L3 (which the daemon's policies may well stay in).
const EVICT_BYTES: usize = 16 << 20;

type Result<T = ()> = std::result::Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) gets a smoke run.
    let measure = std::env::args().any(|a| a == "--bench");
    if let Err(e) = run(measure) {
        eprintln!("policy_decision: {e}");
        std::process::exit(1);
    }
}

struct Scenario {
    label: &'static str,
    others: Action,
    last_allows_client: bool,
    counts: &'static [usize],
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        label: "deny, none match → allow",
        others: Action::Deny,
        last_allows_client: false,
        counts: &[0, 1, 100, 1000],
    },
    Scenario {
        label: "allow, last matches → allow",
        others: Action::Allow,
        last_allows_client: true,
        counts: &[1, 100, 1000],
    },
];

fn run(measure: bool) -> Result {
    let client: Identity = format!("spiffe://{}", TARGET.client_principal)
        .parse()
        .map_err(|e| format!("client identity: {e}"))?;
    let mut rows = Vec::new();
    for scenario in &SCENARIOS {
        for &count in scenario.counts {
            let spec = Spec {
                count,
                others: scenario.others,
                last_allows_client: scenario.last_allows_client,
            };
            let set = policy_set::generate(spec, &TARGET);
            let (store, server) = load(&set)?;
            check_applicable(&store, &server, count)?;
            let mut figures = Vec::new();
            for identity in [None, Some(client.clone())] {
                let connection = ConnectionInfo {
                    source_identity: identity,
                    source_ip: CLIENT_IP.parse().expect("a valid IP literal"),
                    destination: Arc::clone(&server),
                    destination_addr: SERVER_ADDR.parse::<SocketAddr>().expect("a valid literal"),
                };
                check_decision(&store, &connection, &set)?;
                figures.push(time_decisions(&store, &connection, measure));
                if connection.source_identity.is_some() {
                    figures.push(time_cold_decisions(&store, &connection, measure));
                }
            }
            rows.push((scenario.label, count, figures));
        }
    }
    print_table(&rows, measure);
    Ok(())
}

/// A mesh file with the server workload listing the selector policies, plus the policies,
/// loaded as the daemon loads `LOCAL_XDS_PATH`.
fn load(set: &PolicySet) -> Result<(Store, Arc<Workload>)> {
    let listed = set
        .selected
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        "workloads:\n\
         - uid: \"{SERVER_UID}\"\n  name: server\n  namespace: default\n  serviceAccount: server\n\
         \x20 workloadIps: [\"10.77.2.10\"]\n  protocol: HBONE\n  node: n2\n\
         \x20 authorizationPolicies: [{listed}]\n\
         services: []\n{}",
        set.yaml
    );
    let loaded = load_str(&yaml, Path::new("policy-bench.yaml"), &Defaults::default())
        .map_err(|e| format!("the generated mesh does not load: {e}"))?;
    if !loaded.warnings.is_empty() {
        return Err(format!(
            "the generated mesh loads with warnings: {:?}",
            loaded.warnings
        ));
    }
    let server = loaded
        .store
        .workload_by_uid(SERVER_UID)
        .ok_or("the server workload is not in the loaded store")?;
    Ok((loaded.store, server))
}

fn check_applicable(store: &Store, server: &Workload, count: usize) -> Result {
    let applicable = store.policies_for(server);
    if applicable.policies.len() != count || !applicable.missing.is_empty() {
        return Err(format!(
            "{} policies apply to the server ({} missing), want {count}",
            applicable.policies.len(),
            applicable.missing.len()
        ));
    }
    Ok(())
}

/// Every scenario ends in an allow: by the matching ALLOW policy if there is one, else because
/// no ALLOW policy applies.
fn check_decision(store: &Store, connection: &ConnectionInfo, set: &PolicySet) -> Result {
    let want = match &set.allowing {
        Some(policy) => Decision::Allow(AllowReason::AllowPolicy {
            policy: policy.clone(),
        }),
        None => Decision::Allow(AllowReason::NoAllowPolicies),
    };
    let got = authorize(connection, store);
    match got == want {
        true => Ok(()),
        false => Err(format!(
            "identity {:?}: decision {got}, want {want}",
            connection.source_identity.as_ref().map(|i| i.to_string())
        )),
    }
}

/// ns per decision: median, 10th and 90th percentile over the batches.
#[derive(Clone, Copy)]
struct Figure {
    median: f64,
    p10: f64,
    p90: f64,
}

fn time_decisions(store: &Store, connection: &ConnectionInfo, measure: bool) -> Figure {
    let once = || {
        black_box(authorize(black_box(connection), black_box(store)));
    };
    let (batches, per_batch) = match measure {
        true => (BATCHES, calibrate(once)),
        false => (3, 10),
    };
    let mut ns: Vec<f64> = (0..batches)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                once();
            }
            start.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    figure(&mut ns)
}

fn figure(ns: &mut [f64]) -> Figure {
    ns.sort_by(f64::total_cmp);
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize];
    Figure {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

/// ns of single decisions, each after walking a buffer larger than the L2 caches: closer to
/// the daemon, where the TLS, HTTP/2 and socket work between two connections' decisions
/// pushes the policies out of L1/L2. (The timer's own cost, some 20–40 ns, is included.)
fn time_cold_decisions(store: &Store, connection: &ConnectionInfo, measure: bool) -> Figure {
    let mut buffer = vec![0u8; EVICT_BYTES];
    let samples = if measure { BATCHES } else { 3 };
    let mut ns: Vec<f64> = (0..samples)
        .map(|round| {
            // One write per cache line, a different value each round so nothing is elided.
            for line in buffer.chunks_mut(64) {
                line[0] = line[0].wrapping_add(round as u8 | 1);
            }
            black_box(&buffer);
            let start = Instant::now();
            black_box(authorize(black_box(connection), black_box(store)));
            start.elapsed().as_nanos() as f64
        })
        .collect();
    figure(&mut ns)
}

/// Iterations that take about [`BATCH_TIME`], after a warm-up of the same length.
fn calibrate(once: impl Fn()) -> usize {
    let mut n = 1usize;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            once();
        }
        let elapsed = start.elapsed();
        if elapsed >= BATCH_TIME || n >= 1 << 24 {
            let per = elapsed.as_nanos().max(1) as f64 / n as f64;
            return ((BATCH_TIME.as_nanos() as f64 / per) as usize).max(1);
        }
        n *= 2;
    }
}

fn print_table(rows: &[(&str, usize, Vec<Figure>)], measure: bool) {
    if !measure {
        println!("policy_decision: {} scenarios checked (smoke run; `cargo bench --bench policy_decision` measures)", rows.len());
        return;
    }
    println!(
        "authz::authorize, ns per decision: median (p10–p90) of {BATCHES} batches of ~{} ms;",
        BATCH_TIME.as_millis()
    );
    println!(
        "  mTLS cold: {BATCHES} single decisions, each after walking {} MiB (L1/L2 evicted)",
        EVICT_BYTES >> 20
    );
    println!(
        "{:<28} {:>5}  {:>22}  {:>22}  {:>22}",
        "policies", "N", "plaintext", "mTLS", "mTLS cold"
    );
    for (label, count, figures) in rows {
        let cell = |f: &Figure| format!("{:.0} ({:.0}–{:.0})", f.median, f.p10, f.p90);
        let cells: Vec<String> = figures.iter().map(cell).collect();
        println!(
            "{label:<28} {count:>5}  {:>22}  {:>22}  {:>22}",
            cells[0], cells[1], cells[2]
        );
    }
}
