//! Replays the `cni_config` and `plugin_event` fuzz corpora (`fuzz/corpus/<target>/`): every
//! input the fuzzer kept, and every crash it once found, must decode without a panic, forever.
//! The seeds are real configs and events written by `write_seeds` (run with `--ignored`).

use std::path::PathBuf;

use nodetunnel_cni::fuzzing::{cni_invocation, plugin_event};
use serde_json::{json, Value};

/// Every file of a corpus; fails when there is none, so a lost corpus cannot pass.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    nodetunnel_testbed::fuzz_corpus::files(target)
}

#[test]
fn cni_config_corpus_replays_without_panics() {
    let mut with_addresses = 0;
    for (path, bytes) in corpus("cni_config") {
        let outcome = std::panic::catch_unwind(|| cni_invocation(&bytes))
            .unwrap_or_else(|_| panic!("{} panics the CNI plugin", path.display()));
        if matches!(outcome, Ok(ips) if !ips.is_empty()) {
            with_addresses += 1;
        }
    }
    // The ADD seeds carry a prevResult with addresses: if none yields them, the entry point
    // no longer reaches the prevResult conversion (or the seeds rotted).
    assert!(
        with_addresses > 0,
        "no corpus input got pod addresses out of prevResult"
    );
}

#[test]
fn plugin_event_corpus_replays_without_panics() {
    let mut accepted = 0;
    for (path, bytes) in corpus("plugin_event") {
        let outcome = std::panic::catch_unwind(|| plugin_event(&bytes))
            .unwrap_or_else(|_| panic!("{} panics the plugin event decoder", path.display()));
        accepted += usize::from(outcome.is_ok());
    }
    assert!(
        accepted > 0,
        "no corpus input decoded to a valid plugin event"
    );
}

/// A `cni_config` input: command index, `CNI_ARGS`, stdin.
fn invocation(command: u8, cni_args: &str, stdin: &Value) -> Vec<u8> {
    let mut out = vec![command];
    out.extend_from_slice(&(cni_args.len() as u16).to_le_bytes());
    out.extend_from_slice(cni_args.as_bytes());
    out.extend_from_slice(&serde_json::to_vec(stdin).unwrap());
    out
}

#[test]
#[ignore = "writes the seed corpora: cargo test -p nodetunnel-cni --test fuzz_corpus -- --ignored"]
fn write_seeds() {
    const POD: &str =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=app;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1";
    let prev_1 = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c1"}],
        "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"interface": 0, "address": "fd00::5/64"}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.96.0.10"]}});
    let prev_03 = json!({"cniVersion": "0.3.1",
        "ips": [{"version": "4", "interface": 0, "address": "10.1.0.6/24"}]});
    let config = |version: &str, prev: Option<&Value>| {
        let mut c = json!({"cniVersion": version, "name": "k8s-pod-network", "type": "istio-cni",
            "ambient_enabled": true, "exclude_namespaces": ["kube-system"],
            "cni_agent_run_dir": "/var/run/istio-cni", "plugin_log_level": "debug",
            "enablement_selectors": [{"matchLabels": {"istio.io/dataplane-mode": "ambient"}}]});
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    };
    let cni = [
        (
            "add-1.0.0",
            invocation(0, POD, &config("1.0.0", Some(&prev_1))),
        ),
        (
            "add-0.3.1-to-1.0.0",
            invocation(0, POD, &config("1.0.0", Some(&prev_03))),
        ),
        (
            "add-1.0.0-to-0.3.1",
            invocation(0, POD, &config("0.3.1", Some(&prev_1))),
        ),
        ("add-no-prev", invocation(0, POD, &config("1.1.0", None))),
        ("del", invocation(1, POD, &config("1.0.0", Some(&prev_1)))),
        ("check", invocation(2, "", &config("0.4.0", Some(&prev_1)))),
        ("version", invocation(3, "", &json!({}))),
        ("status", invocation(4, "", &config("1.1.0", None))),
        ("gc-old-version", invocation(5, "", &config("0.4.0", None))),
    ];
    let event = |v: Value| serde_json::to_vec(&v).unwrap();
    let events = [
        (
            "event",
            event(json!({"Netns": "/var/run/netns/c1", "PodName": "web",
            "PodNamespace": "app",
            "IPs": [{"Address": {"IP": "10.1.0.5", "Mask": "////AA=="}, "Gateway": "10.1.0.1"}]})),
        ),
        (
            "event-v6",
            event(json!({"Netns": "/var/run/netns/c1", "PodName": "web",
            "PodNamespace": "app",
            "IPs": [{"Address": {"IP": "fd00::5", "Mask": "//////////8AAAAAAAAAAA=="}}]})),
        ),
        (
            "event-cmdaddevent",
            event(json!({"CmdAddEvent": {"Netns": "/proc/42/ns/net"},
            "PodName": "web", "PodNamespace": "app", "IPs": null})),
        ),
    ];
    for (target, seeds) in [("cni_config", &cni[..]), ("plugin_event", &events[..])] {
        let dir = nodetunnel_testbed::fuzz_corpus::dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
