//! The agent under Istio's istio-cni chart, unchanged, end to end: started with exactly the env
//! and args of `tests/fixtures/charts/istio-cni.txt` (the chart's install-cni container rendered
//! for ambient) as a pod of its node — its own network namespace (the chart sets no
//! hostNetwork) and its own mount namespace holding the chart's volume mounts — it enrolls the
//! pods the node's real CNI chain creates, and their traffic crosses HBONE through the real
//! tunnel.
//!
//! The node (the fixture's `NODE_NAME`): a network namespace plus a pid namespace whose pid 1 sits in it, so the
//! node has a /proc of its own whose `1/ns/net` is the node's netns (the real machine's pid 1
//! is never touched). Node paths live under a temp dir `R` (`R/etc/cni/net.d`, `R/opt/cni/bin`,
//! `R/var/run/istio-cni`, `R/var/run/ztunnel`); pods' netns files are the machine's
//! `/run/netns`, where the runtime stand-in creates them.
//!
//! The agent's mount namespace gets each fixture `mount` as the kubelet would make it: the
//! node's procfs (read-only) at `R/host/proc`, `/run/netns` at `R/host/var/run/netns` (with the
//! chart's HostToContainer propagation, so sandboxes created later appear), the CNI dirs at
//! `R/host/...`, and then `/run/netns` itself is hidden, as it is in the container: a pod's
//! netns path from the plugin (a host path) opens only under the host mount.
//!
//! Overridden, and only these, each one the chart's path re-rooted under `R`:
//! `HOST_MOUNTS_PATH` (Istio's fixed `/host`), `CNI_AGENT_RUN_DIR`, `MOUNTED_CNI_NET_DIR`,
//! `HOST_CNI_BIN_DIR`, `ZTUNNEL_UDS_ADDRESS`; plus `KUBECONFIG` (the API stand-in; the chart
//! relies on in-cluster config), `CNI_PLUGIN_BINARY` (the image ships the plugin next to the
//! agent; here cargo's build) and `AMBIENT_DISABLE_SAFE_UPGRADE` (the stand-in serves no
//! DaemonSets). The chart's ports (8000 readiness, 15014 metrics), `ALLOW_SWITCH_TO_HOST_NS`
//! and `AMBIENT_ENABLEMENT_SELECTOR` are kept as rendered.
//!
//! Needs root and `/usr/lib/cni/{ptp,host-local}` (Debian `containernetworking-plugins`);
//! with CI=true a missing piece fails the test instead of skipping it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nodetunnel_testbed::cni_agent::{pod_uid, primary_conflist, NodeRuntime, REFERENCE_PLUGINS};
use nodetunnel_testbed::inpod::{InpodRules, PodTopology};
use nodetunnel_testbed::kube_api::{KubeApi, PodBuilder};
use nodetunnel_testbed::process::NsProcess;
use nodetunnel_testbed::sandbox::Sandbox;
use nodetunnel_testbed::traffic::echo_handler;
use nodetunnel_testbed::tunnel::{http_get, http_get_status};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available, set_env,
    shared_tunnel_env, sibling_binary, Ca, Mesh, MeshConfig, Netns, Server, Workload,
};

const WAIT: Duration = Duration::from_secs(20);
const SERVER_PORT: u16 = 8080;
/// The agent's own pod: its name is the fixture's `POD_NAME`, its address outside the range
/// the node's IPAM hands out.
const AGENT_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 5);
/// What host-local hands out on n1, in order: client, server, opted-out pod.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 30);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 31);
const OPTED_OUT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 32);
/// A pod already running when the agent starts (outside the IPAM range).
const EARLY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 20);
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const REDIRECTION: &str = "ambient.istio.io/redirection";

/// The chart's container, as the fixture renders it.
struct Fixture {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// (mountPath, read-only, host path).
    mounts: Vec<(String, bool, String)>,
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
        mounts: Vec::new(),
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
            "mount" => {
                let parts: Vec<&str> = rest.split(' ').collect();
                let [path, mode, "<-", host] = parts[..] else {
                    panic!("mount <path> <ro|rw> <- <host path>: {line}");
                };
                f.mounts.push((path.into(), mode == "ro", host.into()));
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

/// Whether this machine can run the test; with CI=true a missing piece is a failure.
fn available(test: &str) -> bool {
    if !namespaces_available(test) {
        return false;
    }
    let ptp = Path::new(REFERENCE_PLUGINS).join("ptp");
    if !ptp.is_file() {
        let msg = format!(
            "{test}: {} missing (install containernetworking-plugins)",
            ptp.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("{msg}: skipped");
        return false;
    }
    true
}

/// `R` + an absolute path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The node's pid 1: `unshare --pid --fork` in the node's netns, so a /proc mounted for that
/// pid namespace has it as `1`, in the node's netns. Returns the process and the pid (in
/// this machine's pid namespace) of its forked child, the namespace's init.
fn node_init(node: &Netns, log: &Path) -> (NsProcess, u32) {
    let args: Vec<String> = ["--pid", "--fork", "--kill-child", "sleep", "3600"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let unshare = NsProcess::spawn("node pid 1", node, Path::new("unshare"), &args, &[], log)
        .expect("starting the node's pid 1");
    let children = format!("/proc/{0}/task/{0}/children", unshare.pid());
    let mut init = None;
    assert_eventually!(
        {
            init = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            init.is_some()
        },
        WAIT,
        "the node's pid 1 forked"
    );
    (unshare, init.expect("checked above"))
}

/// The shell prologue that gives the agent's mount namespace (its own: `ip netns exec` makes
/// one, a slave of the machine's) the chart's mounts, then execs the agent.
fn mount_script(f: &Fixture, root: &Path, node_init: u32) -> String {
    let mut script = String::from("set -e\n");
    for (path, ro, host) in &f.mounts {
        let target = under(root, path);
        std::fs::create_dir_all(&target).expect("a mount point");
        let target = target.display();
        match host.as_str() {
            // A procfs of the node's pid namespace, mounted from inside it.
            "/proc" => script.push_str(&format!(
                "nsenter --target {node_init} --pid mount -t proc -o {} proc {target}\n",
                if *ro { "ro" } else { "rw" }
            )),
            // Pod netns files: where the runtime stand-in creates them (Netns::path).
            "/var/run/netns" => script.push_str(&format!("mount --rbind /run/netns {target}\n")),
            _ => {
                let source = under(root, host);
                std::fs::create_dir_all(&source).expect("a node directory");
                if source.display().to_string() != target.to_string() {
                    script.push_str(&format!("mount --bind {} {target}\n", source.display()));
                }
            }
        }
    }
    // The container sees the host's netns files only through its mount.
    script.push_str("mount -t tmpfs tmpfs /run/netns\nexec \"$0\" \"$@\"\n");
    script
}

/// A pod as kubelet first creates it, before its sandbox: Pending, no IP yet.
fn pending_pod(prefix: &str, node: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
    let mut b = PodBuilder::new("default", name)
        .uid(&pod_uid(prefix, name))
        .node(node)
        .service_account(name)
        .phase("Pending");
    for (k, v) in labels {
        b = b.label(k, v);
    }
    b.build()
}

/// Kubelet's status update once the sandbox is up: Running with `ip`, metadata kept.
fn mark_running(kube: &KubeApi, name: &str, ip: Ipv4Addr) {
    let mut pod = kube.pod("default", name).expect("the pod exists");
    pod.status = PodBuilder::new("default", name)
        .ip(IpAddr::V4(ip))
        .build()
        .status;
    kube.put_pod(pod);
}

fn annotation(kube: &KubeApi, name: &str) -> Option<String> {
    kube.pod("default", name)
        .and_then(|p| p.metadata.annotations)
        .and_then(|a| a.get(REDIRECTION).cloned())
}

fn rules_in(ns: &Netns) -> String {
    ns.exec("iptables-save", &[]).expect("iptables-save")
}

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn under_the_charts_settings_the_agent_enrolls_new_pods_and_their_traffic_crosses_hbone() {
    let test = "charts_istio_cni";
    if !available(test) {
        return;
    }
    let f = fixture();
    let chart_env = |name: &str| {
        f.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the chart sets {name}"))
    };
    let pod_name = chart_env("POD_NAME");
    // The Kubernetes node name everywhere: the agent's NODE_NAME (from the chart's fieldRef),
    // the tunnel's, the workloads' and the pods' spec.nodeName.
    let node_name = chart_env("NODE_NAME");
    let mut topo = PodTopology::builder(test)
        .node(&node_name, addr::NODE1)
        .rules(InpodRules::Skip)
        .build()
        .expect("the node");
    let node = topo.node_ns(&node_name).clone();
    let root = topo.path("node");
    let tunnel_bin = sibling_binary("nodetunnel").expect("the nodetunnel binary");
    let control_bin = sibling_binary("nodetunnel-control").expect("the control plane binary");

    // The mesh: two workloads on n1 whose addresses the node's IPAM will hand out.
    let mesh = topo.path("mesh.yaml");
    MeshConfig {
        workloads: vec![
            Workload::new("client", CLIENT_IP, &node_name),
            Workload::new("server", SERVER_IP, &node_name),
            Workload::new("early", EARLY_IP, &node_name),
        ],
        ..MeshConfig::default()
    }
    .write(&mesh)
    .expect("writing the mesh");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).unwrap();
    generate_ca(&tunnel_bin, &ca).expect("generate-ca");
    let control = topo
        .start_control_plane(&node_name, &control_bin, &mesh, &ca, &[])
        .expect("the control plane");

    // The API server, reachable from the node and from the agent's pod.
    let kube = KubeApi::start(Some(&node), addr::NODE1).expect("the API stand-in");
    let kubeconfig = topo.path("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    kube.put_namespace("default", &[(DATAPLANE_MODE, "ambient")]);
    kube.put_namespace("istio-system", &[]);

    // The node's primary CNI: ptp + host-local, three addresses from .30.
    let (mut init_proc, init_pid) = node_init(&node, &topo.path("node-init.log"));
    let agent_pod = topo
        .add_pod(&node_name, &pod_name, AGENT_POD_IP, false)
        .expect("the agent's pod")
        .ns()
        .clone();
    // A pod that was running before the agent: its sandbox process is in the node's pid
    // namespace, so the agent finds its netns under the node's /proc (by cgroup uid and IP).
    let prefix = topo.prefix().to_string();
    let early_ns = topo
        .add_pod(&node_name, "early", EARLY_IP, true)
        .expect("the early pod")
        .ns()
        .clone();
    let _early_sandbox =
        Sandbox::start_in_pid_ns(&early_ns, &prefix, &pod_uid(&prefix, "early"), init_pid)
            .expect("the early pod's sandbox");
    kube.put_pod(
        PodBuilder::new("default", "early")
            .uid(&pod_uid(&prefix, "early"))
            .node(&node_name)
            .service_account("early")
            .ip(IpAddr::V4(EARLY_IP))
            .build(),
    );
    let script = mount_script(&f, &root, init_pid);
    let mut conflist = primary_conflist(addr::NODE1, &topo.path("ipam"));
    conflist["plugins"][0]["ipam"]["ranges"][0][0]["rangeEnd"] = OPTED_OUT_IP.to_string().into();
    std::fs::write(
        under(&root, "/etc/cni/net.d/10-primary.conflist"),
        conflist.to_string(),
    )
    .unwrap();

    // Each override is one of the chart's mount paths, re-rooted under R.
    let chart_path = |default: &str| {
        assert!(
            f.mounts
                .iter()
                .any(|(path, _, _)| default == path || default.starts_with(&format!("{path}/"))),
            "{default} is under one of the chart's mounts"
        );
        under(&root, default).display().to_string()
    };
    let overrides = [
        ("HOST_MOUNTS_PATH", {
            chart_path("/host/proc");
            chart_path("/host/var/run/netns");
            under(&root, "/host").display().to_string()
        }),
        ("CNI_AGENT_RUN_DIR", chart_path("/var/run/istio-cni")),
        ("MOUNTED_CNI_NET_DIR", chart_path("/host/etc/cni/net.d")),
        ("HOST_CNI_BIN_DIR", chart_path("/host/opt/cni/bin")),
        (
            "ZTUNNEL_UDS_ADDRESS",
            chart_path("/var/run/ztunnel/ztunnel.sock"),
        ),
        ("KUBECONFIG", kubeconfig.display().to_string()),
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
    let mut args = vec![
        "-c".to_string(),
        script,
        env!("CARGO_BIN_EXE_nodetunnel-cni-agent").to_string(),
    ];
    args.extend(f.args.iter().cloned());
    let mut agent = NsProcess::spawn(
        "cni agent",
        &agent_pod,
        Path::new("sh"),
        &args,
        &env,
        &topo.path("agent.log"),
    )
    .expect("starting the agent");

    let (ready_path, ready_port) = f.readiness.clone();
    assert_eventually!(
        agent_pod
            .run({
                let path = ready_path.clone();
                move || http_get_status(ready_port, &path)
            })
            .is_ok_and(|s| s == 200),
        WAIT,
        "ready on the chart's readiness probe; log:\n{}",
        agent.log()
    );
    // Host rules went into the node's netns, reached through the node's /proc; none into the
    // agent's own.
    let nat = |ns: &Netns| {
        ns.exec("iptables-save", &["-t", "nat"])
            .expect("iptables-save")
    };
    assert!(nat(&node).contains("ISTIO_POSTRT"), "{}", agent.log());
    assert!(!nat(&agent_pod).contains("ISTIO_POSTRT"));

    // The node's tunnel, in-pod (shared) mode as the ztunnel chart runs it.
    let zds = under(&root, "/var/run/ztunnel/ztunnel.sock");
    let mut tunnel_env = shared_tunnel_env(
        &node_name,
        Mesh::Control(&control),
        Ca::Control(&control),
        &zds,
    );
    set_env(&mut tunnel_env, "INPOD_ENABLED", "true");
    let mut tunnel = topo
        .spawn_tunnel(&node_name, &tunnel_bin, &env_refs(&tunnel_env))
        .expect("starting the tunnel");
    tunnel
        .wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("tunnel ready: {e}; agent log:\n{}", agent.log()));

    // Kubelet creates three pods in the ambient namespace; the runtime runs the node's CNI
    // config — as the agent rewrote it — from the node's netns.
    let runtime = NodeRuntime::of(
        &under(&root, "/etc/cni/net.d"),
        &under(&root, "/opt/cni/bin"),
        &node,
    )
    .expect("the node's CNI config");
    assert_eq!(runtime.list.plugin_types(), ["ptp", "nodetunnel-cni"]);
    let mut sandboxes = Vec::new();
    for (name, ip, labels) in [
        ("client", CLIENT_IP, &[][..]),
        ("server", SERVER_IP, &[][..]),
        ("opted-out", OPTED_OUT_IP, &[(DATAPLANE_MODE, "none")][..]),
    ] {
        kube.put_pod(pending_pod(&prefix, &node_name, name, labels));
        let sandbox = Netns::create(&format!("{prefix}-{name}")).expect("a sandbox netns");
        let (_, result) = runtime
            .add(&sandbox, "default", name)
            .unwrap_or_else(|e| panic!("CNI ADD of {name}: {e}; agent log:\n{}", agent.log()));
        assert_eq!(
            result["ips"][0]["address"],
            format!("{ip}/24"),
            "{name}: the chain's result is ptp's: {result}"
        );
        mark_running(&kube, name, ip);
        sandboxes.push(sandbox);
    }
    let [client_ns, server_ns, opted_out_ns] = &sandboxes[..] else {
        unreachable!("three sandboxes")
    };

    // The chart's selectors: the namespace is ambient, so client and server are enrolled (by
    // the time their ADD returned); the pod labelled `none` is not.
    let tunnel_pods = || {
        tunnel
            .config_dump()
            .map(|d| d["pods"].to_string())
            .unwrap_or_default()
    };
    for (name, ns) in [("client", client_ns), ("server", server_ns)] {
        assert_eq!(
            annotation(&kube, name).as_deref(),
            Some("enabled"),
            "{name}; log:\n{}",
            agent.log()
        );
        assert!(rules_in(ns).contains("-j ISTIO_OUTPUT"), "{name}'s rules");
        assert!(
            tunnel_pods().contains(&pod_uid(&prefix, name)),
            "{name} in the tunnel"
        );
    }
    // The running pod, found under the node's /proc.
    assert_eventually!(
        annotation(&kube, "early").as_deref() == Some("enabled")
            && rules_in(&early_ns).contains("-j ISTIO_OUTPUT")
            && tunnel_pods().contains(&pod_uid(&prefix, "early")),
        WAIT,
        "the running pod enrolled; log:\n{}",
        agent.log()
    );
    assert_eq!(annotation(&kube, "opted-out"), None);
    assert!(!rules_in(opted_out_ns).contains("ISTIO"));
    assert!(!tunnel_pods().contains(&pod_uid(&prefix, "opted-out")));
    // The probe SNAT set in the node's netns holds the enrolled pods.
    let members = node
        .exec("ipset", &["list", "istio-inpod-probes-v4"])
        .unwrap_or_default();
    assert!(members.contains(&CLIENT_IP.to_string()), "{members}");

    // Client to server: captured in the client's netns, over HBONE into the server's.
    let server = Server::start(server_ns, (SERVER_IP, SERVER_PORT).into(), echo_handler)
        .expect("the server");
    let dst: SocketAddr = (SERVER_IP, SERVER_PORT).into();
    let mut s = client_ns
        .run(move || connect_from(CLIENT_IP, dst))
        .expect("connecting");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("the echo");
    assert_eq!(&buf, b"ping");
    drop(s);
    let inbound = tunnel.wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            (
                "src.identity",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
        ],
        WAIT,
    );
    assert!(inbound.contains(&SERVER_IP.to_string()), "{inbound}");
    assert_eq!(
        server.peers().last().map(|p| p.ip()),
        Some(IpAddr::V4(CLIENT_IP)),
        "the server sees the client pod's address"
    );

    // Istio's metrics on the chart's port.
    let (status, body) = agent_pod
        .run({
            let port = f.metrics_port;
            move || http_get(port, "/metrics")
        })
        .expect("metrics on the chart's port");
    assert_eq!(status, 200);
    for (series, want) in [
        ("istio_cni_install_ready", 1.0),
        ("ztunnel_connected", 1.0),
        // The two ambient pods' ADDs reached the agent; the opted-out pod's did not.
        (
            r#"istio_cni_plugin_requests_total{response_code="200"}"#,
            2.0,
        ),
    ] {
        assert_eq!(metric(&body, series), Some(want), "{series} in:\n{body}");
    }
    for series in [
        r#"istio_cni_installs_total{result="SUCCESS"}"#,
        r#"nodeagent_reconcile_events_total{type="add"}"#,
        r#"nodeagent_reconcile_events_total{type="update"}"#,
    ] {
        assert!(
            metric(&body, series).is_some_and(|v| v >= 1.0),
            "{series} in:\n{body}"
        );
    }

    let log = agent.log();
    for note in [
        "REPAIR_*: accepted, not implemented",
        "GOMEMLIMIT: accepted",
    ] {
        assert!(log.contains(note), "start-up note {note:?} in:\n{log}");
    }
    drop(server);
    tunnel.stop();
    agent.terminate();
    init_proc.kill();
    drop(kube);
}
