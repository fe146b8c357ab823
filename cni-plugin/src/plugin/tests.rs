//! `run` end to end without an API server or agent: the paths that must not need them, and
//! the failures that must fail closed.

use serde_json::{json, Value};

use super::args::env;
use super::*;

fn add_env(cni_args: &str) -> impl Fn(&str) -> Option<String> {
    env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", cni_args),
    ])
}

const POD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=app;K8S_POD_NAME=web";

fn prev() -> Value {
    json!({"cniVersion": "1.0.0",
           "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c1"}],
           "ips": [{"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]})
}

fn config(extra: Value) -> Vec<u8> {
    let mut c = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni",
                       "cni_agent_run_dir": "/nonexistent/ntt-run-dir"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

fn error_code(outcome: &Outcome) -> u64 {
    assert_eq!(outcome.exit_code, 1, "{outcome:?}");
    let out = outcome.stdout.as_ref().unwrap();
    for key in ["cniVersion", "code", "msg", "details"] {
        assert!(out.get(key).is_some(), "{key} missing in {out}");
    }
    out["code"].as_u64().unwrap()
}

#[test]
fn version_lists_supported_versions() {
    let out = run(env(&[("CNI_COMMAND", "VERSION")]), b"");
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        out.stdout.unwrap(),
        json!({"cniVersion": "1.0.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn bad_commands_are_env_errors() {
    assert_eq!(error_code(&run(env(&[]), b"{}")), 4);
    let out = run(env(&[("CNI_COMMAND", "FROB")]), &config(json!({})));
    assert_eq!(error_code(&out), 4);
    assert!(out.stdout.unwrap()["details"]
        .as_str()
        .unwrap()
        .contains("FROB"));
}

#[test]
fn del_and_check_succeed_silently_without_anything() {
    for command in ["DEL", "CHECK"] {
        let cfg = config(json!({"ambient_enabled": true, "prevResult": prev()}));
        let out = run(
            env(&[("CNI_COMMAND", command), ("CNI_ARGS", "garbage")]),
            &cfg,
        );
        assert_eq!(
            out,
            Outcome {
                stdout: None,
                exit_code: 0
            },
            "{command}"
        );
    }
}

#[test]
fn status_and_gc_need_1_1_0() {
    for command in ["STATUS", "GC"] {
        let old = run(env(&[("CNI_COMMAND", command)]), &config(json!({})));
        assert_eq!(error_code(&old), 1, "{command}");
        let new = run(
            env(&[("CNI_COMMAND", command)]),
            &config(json!({"cniVersion": "1.1.0",
                           "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})),
        );
        assert_eq!(new.exit_code, 0, "{command}: {new:?}");
        assert_eq!(new.stdout, None);
    }
}

#[test]
fn undecodable_and_unsupported_configs() {
    let out = run(env(&[("CNI_COMMAND", "DEL")]), b"not json");
    assert_eq!(error_code(&out), 6);
    // Missing `type`.
    let out = run(env(&[("CNI_COMMAND", "ADD")]), br#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(error_code(&out), 6);
    assert_eq!(out.stdout.unwrap()["cniVersion"], "0.4.0");
    let out = run(add_env(POD), &config(json!({"cniVersion": "0.2.0"})));
    assert_eq!(error_code(&out), 1);
    assert_eq!(out.stdout.unwrap()["cniVersion"], "1.0.0");
}

#[test]
fn add_passes_prev_result_through_when_not_ambient_enabled() {
    let out = run(add_env(POD), &config(json!({"prevResult": prev()})));
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.unwrap(), prev());
}

#[test]
fn add_converts_to_the_configs_version() {
    // A prevResult that says it is 1.0.0 under a 0.4.0 config comes out as 0.4.0.
    let out = run(
        add_env(POD),
        &config(json!({"cniVersion": "0.4.0", "prevResult": prev()})),
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    let stdout = out.stdout.unwrap();
    assert_eq!(stdout["cniVersion"], "0.4.0");
    assert_eq!(stdout["ips"][0]["version"], "4");
}

#[test]
fn add_without_prev_result_answers_an_empty_result() {
    let out = run(add_env(POD), &config(json!({"cniVersion": "0.3.1"})));
    assert_eq!(out.stdout.unwrap(), json!({"cniVersion": "0.3.1"}));
}

#[test]
fn add_needs_its_environment() {
    let out = run(
        env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]),
        &config(json!({})),
    );
    assert_eq!(error_code(&out), 4);
    let details = out.stdout.unwrap()["details"].as_str().unwrap().to_string();
    assert!(
        details.contains("CNI_NETNS") && details.contains("CNI_IFNAME"),
        "{details}"
    );
    assert_eq!(
        error_code(&run(
            add_env("K8S_POD_NAME"),
            &config(json!({"ambient_enabled": true}))
        )),
        4
    );
}

#[test]
fn add_rejects_a_bad_prev_result() {
    let out = run(
        add_env(POD),
        &config(json!({"prevResult": {"ips": [{"address": "10.1.0.5"}]}})),
    );
    assert_eq!(error_code(&out), 6);
}

#[test]
fn ambient_add_skips_without_api_for_excluded_and_agent_pods() {
    let cfg = config(json!({"ambient_enabled": true, "prevResult": prev(),
                            "exclude_namespaces": ["app"], "pod_namespace": "istio-system"}));
    let out = run(add_env(POD), &cfg);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.unwrap(), prev());

    let agent = "K8S_POD_NAMESPACE=istio-system;K8S_POD_NAME=istio-cni-node-abcde";
    let out = run(add_env(agent), &cfg);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.unwrap(), prev());
}

#[test]
fn ambient_add_for_non_kubernetes_sandboxes_passes_through() {
    let cfg = config(json!({"ambient_enabled": true, "prevResult": prev()}));
    let out = run(add_env("IgnoreUnknown=1"), &cfg);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.unwrap(), prev());
}

#[test]
fn ambient_add_fails_closed_without_kubeconfig() {
    let cfg = config(json!({"ambient_enabled": true, "prevResult": prev()}));
    let out = run(add_env(POD), &cfg);
    assert_eq!(error_code(&out), 11);
    let details = out.stdout.unwrap()["details"].as_str().unwrap().to_string();
    assert!(
        details.contains("/nonexistent/ntt-run-dir/istio-cni-kubeconfig"),
        "{details}"
    );
}

#[test]
fn ambient_add_rejects_bad_selectors() {
    let cfg = config(json!({"ambient_enabled": true,
        "enablement_selectors": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}));
    assert_eq!(error_code(&run(add_env(POD), &cfg)), 7);
}
