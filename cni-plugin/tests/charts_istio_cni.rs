//! The agent under Istio's istio-cni chart, unchanged: started with exactly the env and args of
//! `tests/fixtures/charts/istio-cni.txt` (the chart's install-cni container rendered for ambient)
//! in its own "pod" network namespace, with a "host proc" whose pid 1 lives in a separate "host"
//! network namespace — as on a node, where the chart mounts the host's /proc at /host/proc and
//! sets no hostNetwork.
//!
//! Overridden, and only these: `KUBECONFIG` (the API stand-in; the chart relies on in-cluster
//! config), `PROC_ROOT` (the fake host proc, in place of the chart's /host/proc mount),
//! `CNI_AGENT_RUN_DIR`, `MOUNTED_CNI_NET_DIR`, `HOST_CNI_BIN_DIR`, `ZTUNNEL_UDS_ADDRESS` (the
//! chart's mount paths, remapped into a temp dir so the test writes nothing on the real host),
//! `CNI_PLUGIN_BINARY` (the image ships the plugin next to the agent; here cargo's build) and
//! `AMBIENT_DISABLE_SAFE_UPGRADE` (the stand-in serves no DaemonSets). The chart's ports (8000
//! readiness, 15014 metrics) and `ALLOW_SWITCH_TO_HOST_NS` are kept as rendered.
//!
//! Left for later: pods enrolled and HBONE traffic through the real tunnel in this arrangement
//! (`tests/agent.rs` covers that with the agent in the node's netns).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use nodetunnel_testbed::kube_api::KubeApi;
use nodetunnel_testbed::netns::unique_prefix;
use nodetunnel_testbed::process::NsProcess;
use nodetunnel_testbed::tunnel::{http_get, http_get_status};
use nodetunnel_testbed::{assert_eventually, namespaces_available, Netns};

const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    args: Vec<String>,
    env: Vec<(String, String)>,
    readiness: (String, u16),
    metrics_port: u16,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/charts/istio-cni.txt"
    );
    let text = std::fs::read_to_string(path).expect("reading the chart fixture");
    let mut f = Fixture {
        args: Vec::new(),
        env: Vec::new(),
        readiness: (String::new(), 0),
        metrics_port: 0,
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (kind, rest) = line.split_once(' ').expect("a fixture line: <kind> <rest>");
        match kind {
            "arg" => f.args.push(rest.to_string()),
            "env" => {
                let (k, v) = rest.split_once('=').expect("env NAME=value");
                f.env.push((k.to_string(), v.replace("\\n", "\n")));
            }
            "readiness" => {
                let (p, port) = rest.split_once(' ').expect("readiness <path> <port>");
                f.readiness = (p.to_string(), port.parse().expect("a port"));
            }
            "port" if rest.starts_with("metrics ") => {
                f.metrics_port = rest.split(' ').nth(1).unwrap().parse().expect("a port");
            }
            _ => {}
        }
    }
    f
}

fn nat_table(ns: &Netns) -> String {
    ns.exec("iptables-save", &["-t", "nat"])
        .expect("iptables-save")
}

#[test]
fn the_agent_runs_under_the_charts_container_settings() {
    if !namespaces_available("the_agent_runs_under_the_charts_container_settings") {
        return;
    }
    let prefix = unique_prefix();
    let host = Netns::create(&format!("{prefix}-host")).expect("host netns");
    let agent_ns = Netns::create(&format!("{prefix}-pod")).expect("agent netns");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // The host's pid 1: a process in the "host" netns; the fake proc's `1` points at it.
    let holder = NsProcess::spawn(
        "host pid 1",
        &host,
        Path::new("sleep"),
        &["3600".to_string()],
        &[],
        &d.join("holder.log"),
    )
    .expect("the host's pid 1");
    let proc_root = d.join("hostproc");
    std::fs::create_dir_all(&proc_root).unwrap();
    std::os::unix::fs::symlink(format!("/proc/{}", holder.pid()), proc_root.join("1")).unwrap();

    let kube = KubeApi::start(Some(&agent_ns), Ipv4Addr::LOCALHOST).expect("the API stand-in");
    kube.write_kubeconfig(&d.join("kubeconfig")).unwrap();
    kube.put_namespace("default", &[("istio.io/dataplane-mode", "ambient")]);
    for sub in ["run", "net.d", "bin"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(
        d.join("net.d/10-primary.conflist"),
        r#"{"cniVersion":"1.0.0","name":"primary","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();

    let f = fixture();
    let p = |s: &str| d.join(s).display().to_string();
    let overrides = [
        ("KUBECONFIG", p("kubeconfig")),
        ("PROC_ROOT", p("hostproc")),
        ("CNI_AGENT_RUN_DIR", p("run")),
        ("MOUNTED_CNI_NET_DIR", p("net.d")),
        ("HOST_CNI_BIN_DIR", p("bin")),
        ("ZTUNNEL_UDS_ADDRESS", p("ztunnel.sock")),
        (
            "CNI_PLUGIN_BINARY",
            env!("CARGO_BIN_EXE_nodetunnel-cni").to_string(),
        ),
        ("AMBIENT_DISABLE_SAFE_UPGRADE", "true".into()),
    ];
    let mut env: Vec<(&str, &str)> = f
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in &overrides {
        assert!(
            !f.env.iter().any(|(fk, _)| fk == k),
            "{k} is not in the chart's env"
        );
        env.push((k, v.as_str()));
    }
    let mut agent = NsProcess::spawn(
        "cni agent",
        &agent_ns,
        Path::new(env!("CARGO_BIN_EXE_nodetunnel-cni-agent")),
        &f.args,
        &env,
        &d.join("agent.log"),
    )
    .expect("starting the agent");

    let (ready_path, ready_port) = f.readiness.clone();
    assert_eventually!(
        agent_ns
            .run({
                let path = ready_path.clone();
                move || http_get_status(ready_port, &path)
            })
            .is_ok_and(|s| s == 200),
        WAIT,
        "ready on the chart's readiness probe; log:\n{}",
        agent.log()
    );
    // Host rules went into the host's netns through the host proc, none into the agent's.
    assert!(nat_table(&host).contains("ISTIO_POSTRT"), "{}", agent.log());
    assert!(!nat_table(&agent_ns).contains("ISTIO_POSTRT"));
    let (status, body) = agent_ns
        .run({
            let port = f.metrics_port;
            move || http_get(port, "/metrics")
        })
        .expect("metrics on the chart's port");
    assert_eq!(status, 200);
    for line in ["istio_cni_install_ready 1", "ztunnel_connected 0"] {
        assert!(body.lines().any(|l| l == line), "{line} in:\n{body}");
    }
    let log = agent.log();
    for note in [
        "REPAIR_*: accepted, not implemented",
        "GOMEMLIMIT: accepted",
    ] {
        assert!(log.contains(note), "start-up note {note:?} in:\n{log}");
    }
    agent.terminate();
    drop(kube);
}
