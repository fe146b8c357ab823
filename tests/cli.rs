//! The daemon's command line as Istio's ztunnel image invokes it (`proxy ztunnel`, the args of
//! the ztunnel Helm chart's container; see tests/fixtures/charts/ztunnel.env). Runs the real
//! binary; a deliberately bad `PROXY_MODE` makes it stop at configuration, which shows the args
//! were accepted and the daemon's own start-up reached.

use std::process::{Command, Output};

fn nodetunnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodetunnel"))
        .args(args)
        .env_clear()
        .env("PROXY_MODE", "not-a-mode")
        .output()
        .expect("running nodetunnel")
}

/// The chart fixture's `arg` lines, in order.
fn chart_args() -> Vec<String> {
    include_str!("fixtures/charts/ztunnel.env")
        .lines()
        .filter_map(|l| l.strip_prefix("arg "))
        .map(|a| a.trim().to_string())
        .collect()
}

#[test]
fn the_ztunnel_charts_args_start_the_daemon() {
    let args = chart_args();
    assert_eq!(args, ["proxy", "ztunnel"], "the fixture's args");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    for invocation in [refs.as_slice(), &[]] {
        let out = nodetunnel(invocation);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{invocation:?}: {stderr}");
        assert!(
            stderr.contains("PROXY_MODE") && stderr.contains("not-a-mode"),
            "{invocation:?}: the daemon's configuration was not reached: {stderr}"
        );
    }
}

#[test]
fn another_proxy_kind_is_refused_by_name() {
    let out = nodetunnel(&["proxy", "waypoint"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("waypoint") && stderr.contains("ztunnel"),
        "{stderr}"
    );
}
