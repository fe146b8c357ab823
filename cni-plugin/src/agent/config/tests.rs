use super::*;

#[test]
fn defaults_follow_istio() {
    let c = parse_plain(&["agent", "--node-name", "n1"]).unwrap();
    assert_eq!(c.run_dir, PathBuf::from("/var/run/istio-cni"));
    assert_eq!(
        c.event_socket(),
        PathBuf::from("/var/run/istio-cni/pluginevent.sock")
    );
    assert_eq!(
        c.plugin_kubeconfig(),
        PathBuf::from("/var/run/istio-cni/istio-cni-kubeconfig")
    );
    assert_eq!(
        c.ztunnel_uds_address,
        PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
    assert_eq!(c.health_addr.port(), 8000);
    assert_eq!(c.exclude_namespaces, vec!["kube-system".to_string()]);
    assert!(c.ambient_enabled && !c.ambient_disable_safe_upgrade && !c.native_nftables);
    assert_eq!(c.daemonset_name, "istio-cni-node");
}

#[test]
fn lists_and_booleans_parse() {
    let c = parse_plain(&[
        "agent",
        "--node-name",
        "n1",
        "--exclude-namespaces",
        "a,b",
        "--ambient-dns-capture",
        "true",
    ])
    .unwrap();
    assert_eq!(c.exclude_namespaces, vec!["a", "b"]);
    assert!(c.ambient_dns_capture);
    let missing = parse_plain(&["agent"]).unwrap_err();
    assert!(missing.to_string().contains("--node-name"), "{missing}");
}

/// Parses `args` under the lock, so no other test's environment leaks in.
fn parse_plain(args: &[&str]) -> Result<AgentConfig, clap::Error> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    parse_with(&args, &[])
}

/// The chart's install-cni container as the fixture renders it: (args, env).
fn chart_fixture() -> (Vec<String>, Vec<(String, String)>) {
    let text = include_str!("../../../../tests/fixtures/charts/istio-cni.txt");
    let (mut args, mut env) = (vec!["install-cni".to_string()], Vec::new());
    for line in text.lines() {
        if let Some(arg) = line.strip_prefix("arg ") {
            args.push(arg.to_string());
        } else if let Some(kv) = line.strip_prefix("env ") {
            let (k, v) = kv.split_once('=').unwrap();
            env.push((k.to_string(), v.replace("\\n", "\n")));
        }
    }
    (args, env)
}

/// Parses `args` with exactly `env` as the environment clap reads (set for the call only; the
/// tests of this module hold the lock so they do not see each other's variables).
fn parse_with(args: &[String], env: &[(String, String)]) -> Result<AgentConfig, clap::Error> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in env {
        // SAFETY: tests of this module serialise on LOCK; no other thread reads these names.
        unsafe { std::env::set_var(k, v) };
    }
    let parsed = AgentConfig::try_parse_from(args);
    for (k, _) in env {
        unsafe { std::env::remove_var(k) };
    }
    parsed
}

#[test]
fn the_charts_container_parses_with_istio_meaning() {
    let (args, env) = chart_fixture();
    let c = parse_with(&args, &env).unwrap();
    c.check().unwrap();
    assert_eq!(c.log_filter(), "info");
    assert_eq!(c.node_name, "node-1");
    assert_eq!(c.pod_namespace, "istio-system");
    assert_eq!(c.pod_name.as_deref(), Some("istio-cni-node-x7k2p"));
    assert!(c.ambient_enabled && c.ambient_dns_capture && !c.native_nftables);
    assert!(c.ambient_ipv6, "AMBIENT_IPV6 is acted on, not merely noted");
    assert!(!c.notes().iter().any(|n| n.starts_with("AMBIENT_IPV6")));
    assert_eq!(c.host_netns(), Some(PathBuf::from("/host/proc/1/ns/net")));
    assert_eq!(c.metrics_addr.port(), 15014);
    assert_eq!(c.health_addr.port(), 8000);
    assert_eq!(c.exclude_namespaces, vec!["kube-system"]);
    // The chart's selectors are its defaults, so they decode to ours.
    assert_eq!(
        c.enablement_selectors().unwrap(),
        crate::ambient::default_selectors()
    );
    let notes = c.notes();
    for name in [
        "CURRENT_AGENT_VERSION",
        "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP",
        "ENABLE_AMBIENT_DETECTION_RETRY",
        "REPAIR_*",
        "GOMEMLIMIT",
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(name)),
            "{name}: {notes:?}"
        );
    }
    assert_eq!(c.noted.gomemlimit, Some(8 << 30));
}

/// Each variable's bad value fails naming the variable and the value.
#[test]
fn bad_values_name_variable_and_value() {
    let base = vec!["agent".to_string(), "--node-name".into(), "n1".into()];
    for name in [
        "AMBIENT_ENABLED",
        "AMBIENT_DNS_CAPTURE",
        "AMBIENT_IPV6",
        "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP",
        "ENABLE_AMBIENT_DETECTION_RETRY",
        "ISTIO_OWNED_CNI_CONFIG",
        "CHAINED_CNI_PLUGIN",
        "NATIVE_NFTABLES",
        "ALLOW_SWITCH_TO_HOST_NS",
        "AMBIENT_DISABLE_SAFE_UPGRADE",
        "REPAIR_ENABLED",
        "REPAIR_LABEL_PODS",
        "REPAIR_DELETE_PODS",
        "REPAIR_REPAIR_PODS",
        "REPAIR_RUN_AS_DAEMON",
        "GOMEMLIMIT",
        "METRICS_ADDR",
        "HEALTH_ADDR",
    ] {
        let err = parse_with(&base, &[(name.into(), "maybe".into())]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains("maybe"),
            "{name}: {text}"
        );
    }
    let mut bad_log = base.clone();
    bad_log.push("--log_output_level=default:loud".into());
    let text = parse_with(&bad_log, &[]).unwrap_err().to_string();
    assert!(
        text.contains("log_output_level") && text.contains("loud"),
        "{text}"
    );
}

#[test]
fn go_booleans_and_sizes_and_levels() {
    for t in ["1", "t", "T", "TRUE", "true", "True"] {
        assert_eq!(values::go_bool(t), Ok(true));
    }
    for f in ["0", "f", "F", "FALSE", "false", "False"] {
        assert_eq!(values::go_bool(f), Ok(false));
    }
    assert!(values::go_bool("yes").is_err());
    assert_eq!(values::go_mem_limit("100MiB"), Ok(100 << 20));
    assert_eq!(values::go_mem_limit("off"), Ok(u64::MAX));
    assert!(values::go_mem_limit("100MB").is_err());
    assert!(values::go_mem_limit("").is_err());
    assert_eq!(values::istio_log_level("debug").as_deref(), Ok("debug"));
    assert_eq!(
        values::istio_log_level("default:none,ads:debug").as_deref(),
        Ok("off")
    );
    assert!(values::istio_log_level("ads:verbose").is_err());
}

#[test]
fn refused_settings_and_bad_selectors() {
    let base = vec!["agent".to_string(), "--node-name".into(), "n1".into()];
    let c = parse_with(&base, &[("CHAINED_CNI_PLUGIN".into(), "false".into())]).unwrap();
    assert!(c
        .check()
        .unwrap_err()
        .to_string()
        .contains("CHAINED_CNI_PLUGIN=false"));
    let c = parse_with(&base, &[("ISTIO_OWNED_CNI_CONFIG".into(), "1".into())]).unwrap();
    assert!(c
        .check()
        .unwrap_err()
        .to_string()
        .contains("ISTIO_OWNED_CNI_CONFIG=true"));
    let bad = "- podSelector:\n    matchExpressions:\n    - {key: a, operator: Sometimes}\n";
    let c = parse_with(&base, &[("AMBIENT_ENABLEMENT_SELECTOR".into(), bad.into())]).unwrap();
    let text = c.check().unwrap_err().to_string();
    assert!(
        text.contains("AMBIENT_ENABLEMENT_SELECTOR") && text.contains("Sometimes"),
        "{text}"
    );
    let c = parse_with(
        &base,
        &[("AMBIENT_ENABLEMENT_SELECTOR".into(), "[1".into())],
    )
    .unwrap();
    assert!(c.check().is_err());
    let c = parse_with(&base, &[("ALLOW_SWITCH_TO_HOST_NS".into(), "false".into())]).unwrap();
    assert_eq!(c.host_netns(), None);
}

#[test]
fn reconcile_interval_takes_seconds_or_milliseconds_within_bounds() {
    use std::time::Duration;
    assert_eq!(values::reconcile_interval("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(
        values::reconcile_interval("500ms"),
        Ok(Duration::from_millis(500))
    );
    for bad in ["5", "", "s", "-1s", "1.5s", "10ms", "2h", "3601s"] {
        assert!(values::reconcile_interval(bad).is_err(), "{bad}");
    }
}
