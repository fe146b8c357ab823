//! The node agent end to end: real `nodetunnel-cni-agent` processes (one per node namespace)
//! against a Kubernetes API stand-in served over HTTP (so kube-rs' real client and watcher
//! run), real `nodetunnel` tunnels in shared mode fed by `nodetunnel-control`, pods as network
//! namespaces with a sandbox process in a `pod<uid>` cgroup (so the agent's `/proc` scan finds
//! them), and real iptables/ipset.
//!
//! Topology (`PodTopology::two_node`, no rules preinstalled): n1 — client 10.77.1.10, client2
//! 10.77.1.11 | n2 — server 10.77.2.10, plain 10.77.2.20 (namespace `other`). The API stand-in
//! listens on n1's address inside n1's namespace; both agents reach it.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nodetunnel_testbed::cni_agent::{
    pod_uid, primary_conflist, CniAgent, CniAgentSpec, NodeRuntime, HEALTH_PORT, METRICS_PORT,
};
use nodetunnel_testbed::inpod::{InpodRules, PodTopology};
use nodetunnel_testbed::kube_api::KubeApi;
use nodetunnel_testbed::prom::Exposition;
use nodetunnel_testbed::sandbox::Sandbox;
use nodetunnel_testbed::traffic::echo_handler;
use nodetunnel_testbed::tunnel::http_get_status;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available,
    shared_tunnel_env, sibling_binary, Ca, ControlPlane, Mesh as MeshSource, MeshConfig, Netns,
    Server, Tunnel, Workload,
};

const SERVER_PORT: u16 = 8080;
const REDIRECTION: &str = "ambient.istio.io/redirection";
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// The single address the primary CNI config on n1 hands out (`primary_conflist`).
const FRESH_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 30);
const WAIT: Duration = Duration::from_secs(20);

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel-cni-agent"))
}

fn plugin_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel-cni"))
}

fn tunnel_bin() -> PathBuf {
    sibling_binary("nodetunnel").expect("the nodetunnel binary")
}

fn control_bin() -> PathBuf {
    sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

/// A Running pod on `node` with `ip`, service account = name (as the mesh config expects).
fn pod(uid: &str, namespace: &str, name: &str, node: &str, ip: Ipv4Addr) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "uid": uid },
        "spec": {
            "nodeName": node,
            "serviceAccountName": name,
            "containers": [{ "name": "app", "image": "app" }]
        },
        "status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }]
        }
    }))
    .expect("a pod object")
}

struct Mesh {
    // Drop order: processes before the topology removes their directory.
    tunnels: BTreeMap<String, Tunnel>,
    agents: BTreeMap<String, CniAgent>,
    sandboxes: Vec<Sandbox>,
    control: ControlPlane,
    kube: KubeApi,
    topo: PodTopology,
}

impl Mesh {
    fn start(test: &str) -> Option<Mesh> {
        Mesh::start_with(test, MeshConfig::standard(SERVER_PORT))
    }

    /// A mesh that knows a workload `fresh` at [`FRESH_IP`] (the one address n1's runtime
    /// hands out), with namespace `default` labelled, the server enrolled and serving.
    fn start_for_new_pods(test: &str) -> Option<(Mesh, Server)> {
        let config =
            MeshConfig::standard(SERVER_PORT).with_workload(Workload::new("fresh", FRESH_IP, "n1"));
        let mesh = Mesh::start_with(test, config)?;
        let server = mesh.server();
        mesh.label_default(true);
        assert_eventually!(
            mesh.enrolled("server", "n2"),
            WAIT,
            "server enrolled; log:\n{}",
            mesh.log("n2")
        );
        Some((mesh, server))
    }

    fn start_with(test: &str, mesh_config: MeshConfig) -> Option<Mesh> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = PodTopology::two_node(test, InpodRules::Skip).expect("building the topology");
        let config = topo.path("mesh.yaml");
        mesh_config.write(&config).expect("writing the mesh config");
        let ca = topo.path("ca");
        std::fs::create_dir_all(&ca).expect("creating the CA dir");
        generate_ca(&tunnel_bin(), &ca).expect("nodetunnel generate-ca");
        let control = topo
            .start_control_plane("n1", &control_bin(), &config, &ca, &[])
            .expect("starting the control plane");
        let kube = KubeApi::start(Some(topo.node_ns("n1")), addr::NODE1).expect("the API stand-in");
        kube.write_kubeconfig(&topo.path("kubeconfig"))
            .expect("writing the kubeconfig");
        kube.put_namespace("default", &[]);
        kube.put_namespace("other", &[]);
        let mut sandboxes = Vec::new();
        for p in topo.pods() {
            let namespace = if p.mesh() { "default" } else { "other" };
            kube.put_pod(pod(
                &pod_uid(topo.prefix(), p.name()),
                namespace,
                p.name(),
                p.node(),
                p.ip(),
            ));
            sandboxes.push(
                Sandbox::start(p.ns(), topo.prefix(), &pod_uid(topo.prefix(), p.name()))
                    .expect("a sandbox"),
            );
        }
        let mut mesh = Mesh {
            tunnels: BTreeMap::new(),
            agents: BTreeMap::new(),
            sandboxes,
            control,
            kube,
            topo,
        };
        for node in ["n1", "n2"] {
            let agent = mesh.start_agent(node);
            mesh.agents.insert(node.into(), agent);
            let tunnel = mesh.start_tunnel(node);
            mesh.tunnels.insert(node.into(), tunnel);
        }
        for node in ["n1", "n2"] {
            mesh.wait_agent_ready(node);
        }
        Some(mesh)
    }

    fn start_agent(&self, node: &str) -> CniAgent {
        let dir = self.topo.path(&format!("{node}-agent"));
        let conflist = primary_conflist(self.topo.node(node).ip(), &dir.join("ipam"));
        let spec = CniAgentSpec {
            node,
            agent_bin: agent_bin(),
            plugin_bin: plugin_bin(),
            kubeconfig: &self.topo.path("kubeconfig"),
            primary_conflist: &conflist,
            log_level: "info,kube=warn,nodetunnel_cni::agent=debug",
        };
        // Test doubles for the agent's tools go in `tools_dir` (empty: the real ones run).
        let tools = self.tools_dir(node);
        std::fs::create_dir_all(&tools).expect("creating the tools dir");
        let path = format!(
            "{}:{}",
            tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        CniAgent::start_with_env(self.topo.node_ns(node), &dir, &spec, &[("PATH", &path)])
            .expect("starting the agent")
    }

    /// First on the PATH of `node`'s agent: a binary put here replaces the real tool.
    fn tools_dir(&self, node: &str) -> PathBuf {
        self.topo.path(&format!("{node}-tools"))
    }

    fn start_tunnel(&self, node: &str) -> Tunnel {
        let zds = self.agents[node].zds.clone();
        let env = shared_tunnel_env(
            node,
            MeshSource::Control(&self.control),
            Ca::Control(&self.control),
            &zds,
        );
        let mut tunnel = self
            .topo
            .spawn_tunnel(node, &tunnel_bin(), &env_refs(&env))
            .expect("starting the tunnel");
        tunnel
            .wait_ready(WAIT)
            .expect("the tunnel is ready once the agent sent its snapshot");
        tunnel
    }

    fn wait_agent_ready(&self, node: &str) {
        let ns = self.topo.node_ns(node).clone();
        let agent = &self.agents[node];
        assert_eventually!(
            ns.run(|| http_get_status(HEALTH_PORT, "/readyz"))
                .is_ok_and(|s| s == 200),
            WAIT,
            "agent on {node} ready; log:\n{}",
            agent.process.log_tail(40)
        );
    }

    fn uid(&self, pod: &str) -> String {
        pod_uid(self.topo.prefix(), pod)
    }

    /// The redirection annotation of pod `name`: in namespace `other` if it is the
    /// topology's non-mesh pod, in `default` otherwise (mesh pods and pods a test adds).
    fn pod_annotation(&self, name: &str) -> Option<String> {
        let non_mesh = self
            .topo
            .pods()
            .iter()
            .any(|p| p.name() == name && !p.mesh());
        let namespace = if non_mesh { "other" } else { "default" };
        self.kube
            .pod(namespace, name)
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get(REDIRECTION).cloned())
    }

    /// `iptables-save` inside the pod.
    fn pod_rules(&self, name: &str) -> String {
        rules_in(self.topo.ns(name))
    }

    fn tunnel_pods(&self, node: &str) -> String {
        self.tunnels[node]
            .config_dump()
            .map(|d| d["pods"].to_string())
            .unwrap_or_default()
    }

    fn server(&self) -> Server {
        let pod = self.topo.pod("server");
        Server::start(pod.ns(), (pod.ip(), SERVER_PORT).into(), echo_handler)
            .expect("starting the server")
    }

    fn echo(&self, from: &str) -> io::Result<()> {
        let pod = self.topo.pod(from);
        echo_from(pod.ns(), pod.ip())
    }

    /// The container runtime on `node`, with the node's CNI config as the agent rewrote it.
    fn runtime(&self, node: &str) -> NodeRuntime {
        let agent = &self.agents[node];
        NodeRuntime::of(&agent.net_dir, &agent.bin_dir, self.topo.node_ns(node))
            .expect("the node's CNI config")
    }

    fn log(&self, node: &str) -> String {
        self.agents[node]
            .process
            .log()
            .lines()
            .filter(|l| l.contains("Z ") && !l.contains("iptables-restore"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn label_default(&self, ambient: bool) {
        let labels: &[(&str, &str)] = if ambient {
            &[("istio.io/dataplane-mode", "ambient")]
        } else {
            &[]
        };
        self.kube.put_namespace("default", labels);
    }

    fn enrolled(&self, pod: &str, node: &str) -> bool {
        self.enrolled_ns(pod, self.topo.ns(pod), node)
    }

    /// Like [`enrolled`](Self::enrolled) for a pod whose namespace is `ns` (one the test made
    /// itself rather than the topology).
    fn enrolled_ns(&self, pod: &str, ns: &Netns, node: &str) -> bool {
        self.pod_annotation(pod).as_deref() == Some("enabled")
            && rules_in(ns).contains("-j ISTIO_OUTPUT")
            && self.tunnel_pods(node).contains(&self.uid(pod))
    }

    /// The agent's `/metrics` on `node`, parsed (`None` while it does not answer).
    fn agent_metrics(&self, node: &str) -> Option<Exposition> {
        let (status, body) = self
            .topo
            .node_ns(node)
            .run(|| nodetunnel_testbed::tunnel::http_get(METRICS_PORT, "/metrics"))
            .ok()?;
        (status == 200).then(|| Exposition::parse(&body).expect("the agent's exposition"))
    }

    /// `nodetunnel_cni_unprotected_pods` on `node`.
    fn unprotected(&self, node: &str) -> Option<f64> {
        self.agent_metrics(node)?
            .single("nodetunnel_cni_unprotected_pods", &[])
    }

    /// `nodetunnel_cni_repairs_total{kind}` on `node` (0 before the first).
    fn repairs(&self, node: &str, kind: &str) -> f64 {
        self.agent_metrics(node)
            .map(|m| m.sum("nodetunnel_cni_repairs_total", &[("kind", kind)]))
            .unwrap_or(0.0)
    }

    fn unenrolled(&self, pod: &str, node: &str) -> bool {
        self.pod_annotation(pod).is_none()
            && !self.pod_rules(pod).contains("ISTIO")
            && !self.tunnel_pods(node).contains(&self.uid(pod))
    }
}

/// `iptables-save` inside `ns`.
fn rules_in(ns: &Netns) -> String {
    ns.exec("iptables-save", &[])
        .expect("iptables-save in the pod")
}

fn ipset_members(mesh: &Mesh, node: &str) -> String {
    mesh.topo
        .node_ns(node)
        .exec("ipset", &["list", "istio-inpod-probes-v4"])
        .unwrap_or_default()
}

/// `pod` as kubelet first creates it: Pending, no IP yet.
fn pending(mut pod: Pod) -> Pod {
    pod.status =
        Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).expect("a status"));
    pod
}

/// One echo round trip from `ip` inside `ns` to the server.
fn echo_from(ns: &Netns, ip: Ipv4Addr) -> io::Result<()> {
    let mut s = ns.run(move || connect_from(ip, (addr::SERVER, SERVER_PORT).into()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// `dev:inode` of a namespace file, as the tunnel's `/config_dump` shows a pod's netns.
fn netns_id(ns: &Netns) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(ns.path()).expect("the netns file");
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn labelling_the_namespace_enrolls_running_pods_and_their_traffic_crosses_hbone() {
    let Some(mesh) = Mesh::start("cni_agent_label") else {
        return;
    };
    let server = mesh.server();
    // Before the label: nothing programmed, traffic goes straight to the server.
    mesh.echo("client")
        .expect("direct traffic before enrollment");
    assert_eq!(mesh.pod_annotation("client"), None);
    assert!(!mesh.pod_rules("client").contains("ISTIO"));

    // The agent installed itself: binary, kubeconfig, our entry last in the primary list.
    let agent = &mesh.agents["n1"];
    assert!(agent.bin_dir.join("nodetunnel-cni").is_file());
    assert!(agent.run_dir.join("istio-cni-kubeconfig").is_file());
    assert_eq!(
        agent.plugin_types().expect("the primary conflist"),
        ["ptp", "nodetunnel-cni"]
    );

    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled on {node}: annotation {:?}, tunnel pods {}; agent log:\n{}",
            mesh.pod_annotation(pod),
            mesh.tunnel_pods(node),
            mesh.log(node)
        );
    }
    // Pods outside the labelled namespace are left alone.
    assert_eq!(mesh.pod_annotation("plain"), None);
    assert!(!mesh.pod_rules("plain").contains("ISTIO"));
    // The host side: each enrolled pod's IP in the probe ipset, tagged with its uid.
    let members = ipset_members(&mesh, "n1");
    assert!(
        members.contains(&format!(
            "{} comment \"{}\"",
            addr::CLIENT,
            mesh.uid("client")
        )),
        "{members}"
    );

    // Traffic from the enrolled client crosses HBONE into the server pod.
    mesh.echo("client").expect("traffic after enrollment");
    let inbound = mesh.tunnels["n2"]
        .wait_access_line(&[("direction", "inbound"), ("protocol", "HBONE")], WAIT);
    assert!(
        inbound.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{inbound}"
    );
    assert_eq!(
        server.peers().last().map(|p| p.ip()),
        Some(IpAddr::from(addr::CLIENT)),
        "the server app sees the client pod's address"
    );

    // Label removed: rules, annotation, ipset entry and the tunnel's proxy all go.
    mesh.label_default(false);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.unenrolled(pod, node),
            WAIT,
            "{pod} unenrolled on {node}: annotation {:?}, tunnel pods {}; agent log:\n{}",
            mesh.pod_annotation(pod),
            mesh.tunnel_pods(node),
            mesh.log(node)
        );
    }
    assert!(!ipset_members(&mesh, "n1").contains(&addr::CLIENT.to_string()));
    mesh.echo("client")
        .expect("direct traffic after unenrollment");
}

#[test]
fn a_restarted_tunnel_gets_the_snapshot_and_traffic_works_again() {
    let Some(mut mesh) = Mesh::start("cni_agent_restart") else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    // All three pods, client2 included: the new tunnel's snapshot is expected to hold both of
    // n1's pods, so the restart must not race client2's enrollment.
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    mesh.echo("client").expect("traffic before the restart");

    // Kill n1's tunnel outright and start a new one: the agent hands it every enrolled pod.
    let old = mesh.tunnels.remove("n1").expect("n1's tunnel");
    old.stop();
    let tunnel = mesh.start_tunnel("n1");
    mesh.tunnels.insert("n1".into(), tunnel);
    for pod in ["client", "client2"] {
        assert!(
            mesh.tunnel_pods("n1").contains(&mesh.uid(pod)),
            "{pod} is in the new tunnel's snapshot: {}",
            mesh.tunnel_pods("n1")
        );
    }
    assert_eventually!(
        mesh.echo("client").is_ok(),
        WAIT,
        "traffic after the restart"
    );
    let inbound = mesh.tunnels["n2"]
        .wait_access_line(&[("direction", "inbound"), ("protocol", "HBONE")], WAIT);
    assert!(inbound.contains("sa/client"), "{inbound}");
    // The agent logs the snapshot from its own task once the acks are in: poll for it.
    assert_eventually!(
        mesh.log("n1").contains("snapshot sent: 2 pods, acks ok"),
        WAIT,
        "{}",
        mesh.log("n1")
    );
}

#[test]
fn a_new_pod_is_enrolled_by_the_plugin_add_and_leaves_when_deleted() {
    let Some((mesh, _server)) = Mesh::start_for_new_pods("cni_agent_add") else {
        return;
    };

    // Kubelet: the Pod object exists (Pending, no IP yet), then the runtime creates the
    // sandbox netns and runs the node's CNI config — the one our agent rewrote — with the
    // plugins it finds in the host CNI bin dir, where the agent installed ours.
    let uid = mesh.uid("fresh");
    mesh.kube
        .put_pod(pending(pod(&uid, "default", "fresh", "n1", FRESH_IP)));
    let sandbox =
        Netns::create(&format!("{}-fresh", mesh.topo.prefix())).expect("the sandbox netns");
    let runtime = mesh.runtime("n1");
    assert_eq!(runtime.list.plugin_types(), ["ptp", "nodetunnel-cni"]);
    let (attachment, result) = runtime
        .add(&sandbox, "default", "fresh")
        .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")));
    assert_eq!(
        result["ips"][0]["address"], "10.77.1.30/24",
        "the chain's result is ptp's, passed through: {result}"
    );
    // By the time ADD returned, the pod was enrolled: rules, annotation, tunnel.
    assert!(
        mesh.enrolled_ns("fresh", &sandbox, "n1"),
        "enrolled when ADD returns; log:\n{}",
        mesh.log("n1")
    );
    assert!(
        mesh.log("n1").contains("trigger=CniAdd"),
        "{}",
        mesh.log("n1")
    );
    // Kubelet reports the pod running with its IP: nothing changes.
    mesh.kube
        .put_pod(pod(&uid, "default", "fresh", "n1", FRESH_IP));

    // Its traffic crosses HBONE with its own identity.
    echo_from(&sandbox, FRESH_IP).expect("traffic from the new pod");
    let inbound = mesh.tunnels["n2"].wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("src.identity", "spiffe://cluster.local/ns/default/sa/fresh"),
        ],
        WAIT,
    );
    assert!(inbound.contains("10.77.1.30"), "{inbound}");

    // The pod is deleted. The runtime's DEL frees its address, and a new pod (`fresh2`) gets
    // the same address before the API server tells the agent `fresh` is gone: the late
    // removal of `fresh` must not take `fresh2`'s probe entry with it.
    runtime.del(&attachment, &result).expect("CNI DEL");
    let uid2 = mesh.uid("fresh2");
    mesh.kube
        .put_pod(pending(pod(&uid2, "default", "fresh2", "n1", FRESH_IP)));
    let sandbox2 =
        Netns::create(&format!("{}-fresh2", mesh.topo.prefix())).expect("the second sandbox netns");
    let (attachment2, result2) = runtime
        .add(&sandbox2, "default", "fresh2")
        .unwrap_or_else(|e| panic!("CNI ADD of fresh2: {e}; agent log:\n{}", mesh.log("n1")));
    assert_eq!(result2["ips"][0]["address"], "10.77.1.30/24", "{result2}");
    mesh.kube.delete_pod("default", "fresh");
    assert_eventually!(
        !mesh.tunnel_pods("n1").contains(&uid),
        WAIT,
        "fresh unenrolled after deletion: tunnel pods {}; log:\n{}",
        mesh.tunnel_pods("n1"),
        mesh.log("n1")
    );
    assert!(
        mesh.tunnel_pods("n1").contains(&uid2),
        "fresh2 stays enrolled"
    );
    let members = ipset_members(&mesh, "n1");
    assert!(
        members.contains(&format!("10.77.1.30 comment \"{uid2}\"")),
        "the reused address's probe entry is fresh2's:\n{members}"
    );

    // fresh2 goes too: its entry with it.
    runtime
        .del(&attachment2, &result2)
        .expect("CNI DEL of fresh2");
    mesh.kube.delete_pod("default", "fresh2");
    assert_eventually!(
        !mesh.tunnel_pods("n1").contains(&uid2)
            && !ipset_members(&mesh, "n1").contains("10.77.1.30"),
        WAIT,
        "fresh2 unenrolled after deletion: tunnel pods {}; log:\n{}",
        mesh.tunnel_pods("n1"),
        mesh.log("n1")
    );
}

#[test]
fn pod_labels_override_the_namespace_and_changes_apply_without_restarts() {
    let Some(mut mesh) = Mesh::start("cni_agent_pod_labels") else {
        return;
    };
    // A pod on n1 whose spec says host network. It gets a sandbox in a namespace of its own
    // with its address inside, so the /proc scan would find it: only the host-network rule
    // keeps the agent off it.
    let hostnet_ip = Ipv4Addr::new(10, 77, 1, 12);
    let hostnet_ns = mesh
        .topo
        .add_pod("n1", "hostnet", hostnet_ip, true)
        .expect("the hostnet pod's namespace")
        .ns()
        .clone();
    let sandbox =
        Sandbox::start(&hostnet_ns, mesh.topo.prefix(), &mesh.uid("hostnet")).expect("a sandbox");
    mesh.sandboxes.push(sandbox);
    let mut hostnet = pod(&mesh.uid("hostnet"), "default", "hostnet", "n1", hostnet_ip);
    hostnet.spec.as_mut().unwrap().host_network = Some(true);
    mesh.kube.put_pod(hostnet);
    let relabel = |name: &str, value: Option<&str>| {
        let mut pod = mesh.kube.pod("default", name).expect("the pod");
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        match value {
            Some(v) => labels.insert(DATAPLANE_MODE.into(), v.into()),
            None => labels.remove(DATAPLANE_MODE),
        };
        mesh.kube.put_pod(pod);
    };

    // The namespace is not labelled; the pod label alone enrolls `client`.
    relabel("client", Some("ambient"));
    assert_eventually!(
        mesh.enrolled("client", "n1"),
        WAIT,
        "client enrolled by its own label; log:\n{}",
        mesh.log("n1")
    );
    assert_eq!(mesh.pod_annotation("client2"), None);

    // `client2` opts out, then the namespace joins: everyone but `client2` is in.
    relabel("client2", Some("none"));
    mesh.label_default(true);
    assert_eventually!(
        mesh.enrolled("server", "n2"),
        WAIT,
        "server enrolled; log:\n{}",
        mesh.log("n2")
    );
    // (Eventually: the namespace and pod watches are separate streams, so the agent may see
    // the namespace label before the opt-out and take `client2` in for a moment.)
    assert_eventually!(
        mesh.unenrolled("client2", "n1"),
        WAIT,
        "client2 opted out; log:\n{}",
        mesh.log("n1")
    );

    // Dropping the opt-out enrolls it; no pod restarts.
    relabel("client2", None);
    assert_eventually!(
        mesh.enrolled("client2", "n1"),
        WAIT,
        "client2 enrolled once its opt-out went; log:\n{}",
        mesh.log("n1")
    );
    // By now n1's agent has handled the namespace label for every pod there, `hostnet` too.
    let hostnet = mesh.kube.pod("default", "hostnet").expect("hostnet");
    assert!(
        !hostnet
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(REDIRECTION),
        "a host-network pod must never be enrolled"
    );
    assert!(!rules_in(&hostnet_ns).contains("ISTIO"), "nor get rules");
}

#[test]
fn a_restarted_agent_takes_over_enrolled_pods_without_disturbing_them() {
    let Some(mut mesh) = Mesh::start("cni_agent_agent_restart") else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    // The agent dies (SIGKILL: no cleanup at all). The tunnel keeps serving its pods.
    let mut old = mesh.agents.remove("n1").expect("n1's agent");
    old.process.kill();
    mesh.echo("client")
        .expect("traffic while the agent is gone");
    // Meanwhile `client2` opts out: nobody is there to see it.
    let mut client2 = mesh.kube.pod("default", "client2").expect("client2");
    client2
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(DATAPLANE_MODE.into(), "none".into());
    mesh.kube.put_pod(client2);

    // A new agent finds `client` (annotated, rules in place) under /proc, hands it to the
    // reconnecting tunnel in its snapshot, and programs nothing twice; `client2`, enrolled by
    // the old agent, is cleaned up: left out of the snapshot (so the tunnel drains it), its
    // rules, annotation and probe entry removed.
    let agent = mesh.start_agent("n1");
    mesh.agents.insert("n1".into(), agent);
    mesh.wait_agent_ready("n1");
    assert_eventually!(
        mesh.log("n1").contains("snapshot sent: 1 pods, acks ok"),
        WAIT,
        "the tunnel got client alone from the new agent; log:\n{}",
        mesh.log("n1")
    );
    assert!(mesh.enrolled("client", "n1"), "client still enrolled");
    let rules = mesh.pod_rules("client");
    assert_eq!(
        rules.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
        2,
        "one jump in mangle and one in nat, not more:\n{rules}"
    );
    assert_eventually!(
        mesh.unenrolled("client2", "n1")
            && !ipset_members(&mesh, "n1").contains(&addr::CLIENT2.to_string()),
        WAIT,
        "client2 cleaned up after the restart; log:\n{}",
        mesh.log("n1")
    );
    mesh.echo("client")
        .expect("traffic after the agent restart");
    let tunnel = mesh.tunnels.get_mut("n1").expect("n1's tunnel");
    assert!(
        tunnel.try_wait().is_ok_and(|s| s.is_none()),
        "the tunnel kept running"
    );
}

#[test]
fn a_recreated_sandbox_replaces_the_old_one_in_the_tunnel() {
    let Some((mesh, _server)) = Mesh::start_for_new_pods("cni_agent_resandbox") else {
        return;
    };
    let uid = mesh.uid("fresh");
    mesh.kube
        .put_pod(pod(&uid, "default", "fresh", "n1", FRESH_IP));
    let runtime = mesh.runtime("n1");

    // The first sandbox, enrolled by its ADD.
    let first = Netns::create(&format!("{}-fresh-1", mesh.topo.prefix())).expect("a sandbox");
    let (attachment, result) = runtime
        .add(&first, "default", "fresh")
        .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")));
    assert!(mesh.tunnel_pods("n1").contains(&netns_id(&first)));

    // It dies; kubelet DELs it (a no-op for our plugin) and creates a new sandbox for the
    // same pod, same uid, which the runtime ADDs: the tunnel must serve the pod from the new
    // namespace, and only from it.
    runtime.del(&attachment, &result).expect("CNI DEL");
    let second = Netns::create(&format!("{}-fresh-2", mesh.topo.prefix())).expect("a sandbox");
    runtime
        .add(&second, "default", "fresh")
        .unwrap_or_else(|e| panic!("CNI ADD again: {e}; agent log:\n{}", mesh.log("n1")));
    let pods = mesh.tunnel_pods("n1");
    assert_eq!(
        pods.matches(&uid).count(),
        1,
        "one proxy for the pod: {pods}"
    );
    assert!(
        pods.contains(&netns_id(&second)),
        "served from the new sandbox: {pods}"
    );
    assert!(
        !pods.contains(&netns_id(&first)),
        "not from the old one: {pods}"
    );
    assert!(
        rules_in(&second).contains("-j ISTIO_OUTPUT"),
        "the new sandbox has the rules"
    );
    echo_from(&second, FRESH_IP).expect("traffic from the new sandbox");
    mesh.tunnels["n2"].wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("src.identity", "spiffe://cluster.local/ns/default/sa/fresh"),
        ],
        WAIT,
    );
}

/// The agent's ClusterRole and Role (manifests/base/cni-agent-rbac.yaml, as each overlay renders
/// them) allow exactly the API calls the agent and the plugin make with the agent's token: the
/// requests the API stand-in records while running pods are enrolled (namespace label), a new
/// pod comes through the plugin's ADD, pods are unenrolled, and an agent stops with its
/// upgrade check on. Every call must be allowed, and every permission must be used.
#[test]
fn the_rendered_rbac_allows_exactly_the_api_calls_the_agent_and_plugin_make() {
    use nodetunnel_testbed::manifests::{self, pod_env, rbac, OVERLAYS};
    use nodetunnel_testbed::process::NsProcess;

    if !manifests::kubectl_available("cni_agent_rbac") {
        return;
    }
    let Some((mut mesh, _server)) = Mesh::start_for_new_pods("cni_agent_rbac") else {
        return;
    };
    // Running pods were enrolled by the namespace label (watches, annotation patches). Now a
    // new pod through the plugin (it reads the pod and its namespace)...
    let uid = mesh.uid("fresh");
    mesh.kube
        .put_pod(pending(pod(&uid, "default", "fresh", "n1", FRESH_IP)));
    let sandbox =
        Netns::create(&format!("{}-fresh", mesh.topo.prefix())).expect("the sandbox netns");
    let runtime = mesh.runtime("n1");
    runtime
        .add(&sandbox, "default", "fresh")
        .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")));
    // ...then every pod leaves the mesh (the annotation is removed).
    mesh.label_default(false);
    assert_eventually!(
        mesh.unenrolled("server", "n2") && mesh.pod_annotation("fresh").is_none(),
        WAIT,
        "unenrolled; log:\n{}",
        mesh.log("n2")
    );

    // An agent stopping with the upgrade check (the mesh's agents skip it: the stand-in has no
    // DaemonSets, so the lookup says "gone" and the plugin is removed, as on uninstall). Its
    // name and namespace are the manifest's.
    let rendered = manifests::render("with-istio", &tunnel_bin()).unwrap_or_else(|e| panic!("{e}"));
    let ds = rendered.object("DaemonSet", "nodetunnel-cni-node").unwrap();
    let manifest_env = pod_env::materialize(
        &rendered,
        ds,
        "cni-agent",
        &pod_env::PodFacts::example("cni"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (daemonset, namespace) = (
        manifest_env
            .var("DAEMONSET_NAME")
            .expect("DAEMONSET_NAME")
            .to_string(),
        manifest_env
            .var("POD_NAMESPACE")
            .expect("POD_NAMESPACE")
            .to_string(),
    );
    drop(mesh.agents.remove("n1"));
    let dir = mesh.topo.path("n1-agent-upgrade-check");
    for sub in ["run", "net.d", "bin"] {
        std::fs::create_dir_all(dir.join(sub)).expect("the agent's dirs");
    }
    let conflist = primary_conflist(mesh.topo.node("n1").ip(), &dir.join("ipam"));
    std::fs::write(
        dir.join("net.d").join("10-primary.conflist"),
        conflist.to_string(),
    )
    .expect("the primary conflist");
    let path = |sub: &str| dir.join(sub).display().to_string();
    let kubeconfig = mesh.topo.path("kubeconfig").display().to_string();
    let plugin = plugin_bin().display().to_string();
    let health = format!("127.0.0.1:{HEALTH_PORT}");
    let env = [
        ("NODE_NAME", "n1"),
        ("POD_NAMESPACE", namespace.as_str()),
        ("DAEMONSET_NAME", daemonset.as_str()),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("CNI_AGENT_RUN_DIR", &path("run")),
        ("ZTUNNEL_UDS_ADDRESS", &path("ztunnel.sock")),
        ("MOUNTED_CNI_NET_DIR", &path("net.d")),
        ("HOST_CNI_BIN_DIR", &path("bin")),
        ("CNI_PLUGIN_BINARY", plugin.as_str()),
        ("HOST_MOUNTS_PATH", "/"),
        ("PROC_ROOT", "/proc"),
        ("HEALTH_ADDR", health.as_str()),
        ("METRICS_ADDR", "127.0.0.1:0"),
        // Install only: this agent is here for its shutdown.
        ("AMBIENT_ENABLED", "false"),
    ];
    let mut agent = NsProcess::spawn(
        "cni agent (upgrade check)",
        mesh.topo.node_ns("n1"),
        agent_bin(),
        &[],
        &env,
        &dir.join("agent.log"),
    )
    .expect("starting the agent");
    let ns = mesh.topo.node_ns("n1").clone();
    assert_eventually!(
        ns.run(|| http_get_status(HEALTH_PORT, "/readyz"))
            .is_ok_and(|s| s == 200),
        WAIT,
        "agent ready; log:\n{}",
        agent.log_tail(40)
    );
    agent.terminate();
    assert!(
        agent.log().contains("agent stopping"),
        "the agent looked its DaemonSet up: {}",
        agent.log_tail(20)
    );

    let calls: Vec<rbac::ApiCall> = mesh
        .kube
        .requests()
        .iter()
        .filter_map(|line| rbac::api_call(line).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for overlay in OVERLAYS {
        let rendered = manifests::render(overlay, &tunnel_bin()).unwrap_or_else(|e| panic!("{e}"));
        let service_account = ds["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("the agent's service account");
        let grants =
            rbac::grants(&rendered, &namespace, service_account).unwrap_or_else(|e| panic!("{e}"));
        let denied: BTreeSet<String> = calls
            .iter()
            .filter(|call| !grants.iter().any(|g| g.allows(call)))
            .map(ToString::to_string)
            .collect();
        assert!(
            denied.is_empty(),
            "overlays/{overlay}: calls the RBAC rules do not allow: {denied:?}"
        );
        let unused: BTreeSet<String> = grants
            .iter()
            .flat_map(|g| g.calls().into_iter().map(move |c| (g.source.clone(), c)))
            .filter(|(_, granted)| !calls.iter().any(|call| covers(granted, call)))
            .map(|(source, granted)| format!("{source}: {granted}"))
            .collect();
        assert!(
            unused.is_empty(),
            "overlays/{overlay}: permissions nothing used: {unused:?}\ncalls: {calls:#?}"
        );
    }
}

/// `call` is one of the calls the single permission `granted` stands for (same verb and
/// resource; in its namespace and of its name when it names them).
fn covers(
    granted: &nodetunnel_testbed::manifests::rbac::ApiCall,
    call: &nodetunnel_testbed::manifests::rbac::ApiCall,
) -> bool {
    granted.verb == call.verb
        && granted.group == call.group
        && granted.resource == call.resource
        && granted
            .namespace
            .as_ref()
            .is_none_or(|ns| call.namespace.as_ref() == Some(ns))
        && granted
            .name
            .as_ref()
            .is_none_or(|n| call.name.as_ref() == Some(n))
}

/// The node agents crash and come back (SIGKILL, then a new process) under continuous
/// traffic from the client pod to the server pod — short connections one after another and
/// long streams, every byte checked: the tunnels keep serving, reconnect, get every pod in
/// the new agent's snapshot, and nothing fails.
#[test]
fn agent_restarts_under_continuous_traffic_drop_nothing() {
    use nodetunnel_testbed::traffic::continuous::{ContinuousTraffic, TrafficSpec};
    let Some(mut mesh) = Mesh::start("cni_agent_restart_traffic") else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    let client = mesh.topo.pod("client");
    let traffic = ContinuousTraffic::start(&TrafficSpec {
        ns: client.ns().clone(),
        src: client.ip(),
        dst: (addr::SERVER, SERVER_PORT).into(),
        short_loops: 2,
        long_streams: 2,
    })
    .expect("starting the traffic");
    let progress = |traffic: &ContinuousTraffic, step: &str| {
        let (short, long) = (traffic.short_ok(), traffic.long_bytes());
        assert_eventually!(
            traffic.short_ok() >= short + 100 && traffic.long_bytes() > long,
            WAIT,
            "traffic stalled {step}; failures: {:?}",
            traffic.failures()
        );
    };
    progress(&traffic, "before the restarts");
    for (node, pods) in [("n1", 2), ("n2", 1)] {
        let mut old = mesh.agents.remove(node).expect("the node's agent");
        old.process.kill();
        progress(&traffic, &format!("while the {node} agent is gone"));
        let agent = mesh.start_agent(node);
        mesh.agents.insert(node.into(), agent);
        mesh.wait_agent_ready(node);
        let snapshot = format!("snapshot sent: {pods} pods, acks ok");
        assert_eventually!(
            mesh.log(node).contains(&snapshot),
            WAIT,
            "the {node} tunnel got its pods from the new agent; log:\n{}",
            mesh.log(node)
        );
        progress(&traffic, &format!("after the {node} agent restart"));
    }
    let report = traffic.stop();
    println!("CNI agent restarts on n1 and n2: {report}");
    assert!(
        report.failures.is_empty(),
        "failures: {:#?}",
        report.failures
    );
    assert!(
        report
            .long
            .iter()
            .all(|l| l.error.is_none() && l.verified > 0),
        "{:?}",
        report.long
    );
    for (node, tunnel) in &mut mesh.tunnels {
        assert!(
            tunnel.try_wait().is_ok_and(|s| s.is_none()),
            "the {node} tunnel kept running"
        );
    }
}

/// Posts a CNI ADD event straight to the agent's event socket (as the plugin would) and
/// returns the status line and body.
fn post_add_event(run_dir: &Path, netns: &Path, pod: &str, ip: Ipv4Addr) -> String {
    use std::io::{Read, Write};
    let body = serde_json::json!({
        "Netns": netns.display().to_string(),
        "PodName": pod,
        "PodNamespace": "default",
        "IPs": [{"Interface": 2, "Address": {"IP": ip.to_string(), "Mask": "////AA=="}, "Gateway": ""}],
    })
    .to_string();
    let mut s = std::os::unix::net::UnixStream::connect(run_dir.join("pluginevent.sock"))
        .expect("the agent's event socket");
    write!(
        s,
        "POST /cmdadd HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A CNI ADD event must prove its pod: one for a pod scheduled on another node, one naming
/// the node's own network namespace, and one whose IP is not in the netns it names are each
/// refused (400, saying why) and enroll nothing. The same pod's real ADD then works.
#[test]
fn cni_add_events_that_do_not_prove_their_pod_are_refused() {
    let Some((mesh, _server)) = Mesh::start_for_new_pods("cni_agent_add_checks") else {
        return;
    };
    let uid = mesh.uid("fresh");
    mesh.kube
        .put_pod(pending(pod(&uid, "default", "fresh", "n1", FRESH_IP)));
    let other_uid = mesh.uid("elsewhere");
    mesh.kube.put_pod(pending(pod(
        &other_uid,
        "default",
        "elsewhere",
        "n2",
        FRESH_IP,
    )));
    let sandbox =
        Netns::create(&format!("{}-fresh", mesh.topo.prefix())).expect("the sandbox netns");
    let run_dir = mesh.agents["n1"].run_dir.clone();

    let cases = [
        ("elsewhere", sandbox.path(), "scheduled on node \"n2\""),
        ("fresh", mesh.topo.node_ns("n1").path(), "network namespace"),
        (
            "fresh",
            sandbox.path(),
            "is not on any interface in the netns",
        ),
    ];
    for (pod_name, netns, why) in cases {
        let answer = post_add_event(&run_dir, &netns, pod_name, FRESH_IP);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{pod_name} in {}: {answer}\nlog:\n{}",
            netns.display(),
            mesh.log("n1")
        );
        assert!(
            answer.contains(why),
            "{pod_name}: expected {why:?} in {answer}"
        );
    }
    assert!(mesh.pod_annotation("fresh").is_none());
    assert!(!mesh.tunnel_pods("n1").contains(&uid));
    assert!(!mesh.tunnel_pods("n1").contains(&other_uid));

    // The runtime's real ADD configures the address in the sandbox: now it proves the pod.
    mesh.runtime("n1")
        .add(&sandbox, "default", "fresh")
        .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")));
    assert!(
        mesh.enrolled_ns("fresh", &sandbox, "n1"),
        "enrolled after the real ADD; log:\n{}",
        mesh.log("n1")
    );
}

/// Issue 17, "faults survived": the real node agents are SIGKILLed five times each under
/// continuous traffic (short connections one after another and long streams, every byte
/// checked), each time replaced by a new one. No pod is ever drained — neither tunnel logs a
/// drain, and each keeps every pod across every restart — no connection drops, and every
/// byte arrives.
#[test]
fn agents_killed_five_times_under_traffic_drain_no_pod_and_drop_nothing() {
    use nodetunnel_testbed::traffic::continuous::{ContinuousTraffic, TrafficSpec};
    const KILLS: usize = 5;
    let Some(mut mesh) = Mesh::start("cni_agent_kill5") else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    let pods = [("client", "n1"), ("client2", "n1"), ("server", "n2")];
    for (pod, node) in pods {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    let client = mesh.topo.pod("client");
    let traffic = ContinuousTraffic::start(&TrafficSpec {
        ns: client.ns().clone(),
        src: client.ip(),
        dst: (addr::SERVER, SERVER_PORT).into(),
        short_loops: 2,
        long_streams: 2,
    })
    .expect("starting the traffic");
    let progress = |traffic: &ContinuousTraffic, step: &str| {
        let (short, long) = (traffic.short_ok(), traffic.long_bytes());
        assert_eventually!(
            traffic.short_ok() >= short + 50 && traffic.long_bytes() > long,
            WAIT,
            "traffic stalled {step}; failures: {:?}",
            traffic.failures()
        );
    };
    progress(&traffic, "before the kills");
    for round in 1..=KILLS {
        for node in ["n1", "n2"] {
            let mut old = mesh.agents.remove(node).expect("the node's agent");
            old.process.kill();
        }
        progress(
            &traffic,
            &format!("with both agents killed (round {round})"),
        );
        for (node, pods) in [("n1", 2), ("n2", 1)] {
            let agent = mesh.start_agent(node);
            mesh.agents.insert(node.into(), agent);
            mesh.wait_agent_ready(node);
            let snapshot = format!("snapshot sent: {pods} pods, acks ok");
            assert_eventually!(
                mesh.log(node).contains(&snapshot),
                WAIT,
                "round {round}: the {node} tunnel got its pods from the new agent; log:\n{}",
                mesh.log(node)
            );
        }
        for (pod, node) in pods {
            assert!(
                mesh.tunnel_pods(node).contains(&mesh.uid(pod)),
                "round {round}: the {node} tunnel lost {pod}: {}",
                mesh.tunnel_pods(node)
            );
        }
        progress(
            &traffic,
            &format!("after the agents came back (round {round})"),
        );
    }
    let report = traffic.stop();
    println!("CNI agents SIGKILLed {KILLS} times each on n1 and n2: {report}");
    assert!(
        report.failures.is_empty(),
        "failures: {:#?}",
        report.failures
    );
    assert!(
        report
            .long
            .iter()
            .all(|l| l.error.is_none() && l.verified > 0),
        "{:?}",
        report.long
    );
    for (node, tunnel) in &mut mesh.tunnels {
        assert!(
            tunnel.try_wait().is_ok_and(|s| s.is_none()),
            "the {node} tunnel kept running"
        );
        let log = tunnel.log();
        let lost = log.matches("node agent connection lost").count();
        assert!(
            lost >= KILLS,
            "the {node} tunnel saw {lost} agent losses, expected {KILLS}"
        );
        let drains: Vec<&str> = log.lines().filter(|l| l.contains("draining")).collect();
        assert!(
            drains.is_empty(),
            "the {node} tunnel drained pods: {drains:#?}"
        );
    }
}

/// The `-A`/chain lines of an `iptables-save` (no counters or timestamps).
fn rule_lines(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(':') || l.starts_with('*'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect()
}

/// Inbound HBONE access lines on `node`'s tunnel from `sa`.
fn hbone_lines(mesh: &Mesh, node: &str, sa: &str) -> usize {
    let identity = format!("spiffe://cluster.local/ns/default/sa/{sa}");
    mesh.tunnels[node]
        .access_lines(&[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("src.identity", identity.as_str()),
        ])
        .len()
}

/// SIGKILL: no cleanup, as when the node loses power.
fn kill_tunnel(tunnel: Tunnel) {
    let pid = tunnel.pid().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    tunnel.stop();
}

#[test]
fn flushed_in_pod_rules_are_restored_by_the_reconcile_pass() {
    let Some(mesh) = Mesh::start("cni_agent_flush") else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    // Steady state: every enrolled pod protected.
    for node in ["n1", "n2"] {
        assert_eventually!(
            mesh.unprotected(node) == Some(0.0),
            WAIT,
            "gauge on {node}: {:?}; log:\n{}",
            mesh.unprotected(node),
            mesh.log(node)
        );
    }
    let written = rule_lines(&mesh.pod_rules("client"));
    assert!(
        written.iter().any(|l| l.contains("--to-ports 15001")),
        "{written:?}"
    );
    let repairs = mesh.repairs("n1", "rules");
    let crossed = hbone_lines(&mesh, "n2", "client");

    // Someone flushes the pod's nat and mangle tables: jumps and our rules are gone.
    let ns = mesh.topo.ns("client");
    for table in ["nat", "mangle"] {
        ns.exec("iptables", &["-t", table, "-F"])
            .expect("flushing inside the pod");
    }
    assert!(!mesh.pod_rules("client").contains("-j ISTIO_OUTPUT"));

    // The next pass finds them incomplete and writes exactly the same set again.
    assert_eventually!(
        rule_lines(&mesh.pod_rules("client")) == written,
        WAIT,
        "rules restored:\n{}\nlog:\n{}",
        mesh.pod_rules("client"),
        mesh.log("n1")
    );
    assert_eventually!(
        mesh.repairs("n1", "rules") > repairs && mesh.unprotected("n1") == Some(0.0),
        WAIT,
        "repair counted, gauge back to 0: {:?}",
        mesh.unprotected("n1")
    );
    let log = mesh.log("n1");
    assert!(
        log.lines()
            .any(|l| l.contains("in-pod rules were missing or altered")
                && l.contains("default/client")),
        "{log}"
    );
    // And the pod's traffic is captured again: it crosses HBONE.
    mesh.echo("client").expect("traffic after the repair");
    assert_eventually!(
        hbone_lines(&mesh, "n2", "client") > crossed,
        WAIT,
        "the connection after the repair crossed HBONE"
    );
}

#[test]
fn a_node_reboot_without_the_kernel_never_lets_pod_traffic_out_unencrypted() {
    let Some(mut mesh) = Mesh::start("cni_agent_reboot") else {
        return;
    };
    let server = mesh.server();
    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    mesh.echo("client").expect("traffic before the outage");
    let crossed = hbone_lines(&mesh, "n2", "client");

    // Every tunnel and every agent dies at once (SIGKILL); the pods' namespaces stay.
    for node in ["n1", "n2"] {
        kill_tunnel(mesh.tunnels.remove(node).expect("the tunnel"));
        let mut agent = mesh.agents.remove(node).expect("the agent");
        agent.process.kill();
    }
    // The server's listener records every peer: from here on, nothing may reach it until
    // the tunnels are back. Mesh pods are refused at their own end (their rules redirect
    // to 15001, where nothing listens), and `plain`, outside the mesh, at the server's
    // (its rules redirect inbound to 15006).
    let accepted = server.accepted();
    let attempts = |mesh: &Mesh| {
        for from in ["client", "client2", "plain"] {
            assert!(
                mesh.echo(from).is_err(),
                "{from} reached the server while no tunnel runs"
            );
        }
    };
    attempts(&mesh);

    // The agents come back first: they find the pods again under /proc and report them
    // unprotected (no tunnel) until the tunnels connect; traffic is still refused.
    for node in ["n1", "n2"] {
        let agent = mesh.start_agent(node);
        mesh.agents.insert(node.into(), agent);
    }
    for node in ["n1", "n2"] {
        mesh.wait_agent_ready(node);
    }
    for (node, pods) in [("n1", 2.0), ("n2", 1.0)] {
        assert_eventually!(
            mesh.unprotected(node) == Some(pods),
            WAIT,
            "{pods} unprotected pods on {node} without a tunnel: {:?}; log:\n{}",
            mesh.unprotected(node),
            mesh.log(node)
        );
    }
    let log = mesh.log("n1");
    assert!(
        log.lines().any(|l| l.contains("unprotected")
            && l.contains("default/client")
            && l.contains("no tunnel")),
        "a line names the pod and why:\n{log}"
    );
    attempts(&mesh);
    assert_eq!(
        server.accepted(),
        accepted,
        "no connection reached the server during the outage: peers {:?}",
        server.peers()
    );

    // The tunnels come back: every pod is protected again and traffic crosses HBONE.
    for node in ["n1", "n2"] {
        let tunnel = mesh.start_tunnel(node);
        mesh.tunnels.insert(node.into(), tunnel);
    }
    for node in ["n1", "n2"] {
        assert_eventually!(
            mesh.unprotected(node) == Some(0.0),
            WAIT,
            "every pod on {node} protected again: {:?}; log:\n{}",
            mesh.unprotected(node),
            mesh.log(node)
        );
    }
    for pod in ["client", "client2"] {
        assert!(
            mesh.enrolled(pod, "n1"),
            "{pod} served by the new tunnel: {}",
            mesh.tunnel_pods("n1")
        );
    }
    assert_eventually!(
        mesh.echo("client").is_ok(),
        WAIT,
        "traffic after the restart"
    );
    assert_eventually!(
        hbone_lines(&mesh, "n2", "client") > 0,
        WAIT,
        "the new tunnel's connection crossed HBONE (before the outage: {crossed} lines in the old log)"
    );
    assert_eq!(
        server.peers().last().map(|p| p.ip()),
        Some(IpAddr::from(addr::CLIENT)),
        "the server sees the client pod's address"
    );
}

#[test]
fn a_sandbox_replaced_without_a_cni_add_is_found_by_the_proc_scan() {
    let Some(mut mesh) = Mesh::start("cni_agent_resandbox_scan") else {
        return;
    };
    mesh.label_default(true);
    assert_eventually!(
        mesh.enrolled("client2", "n1"),
        WAIT,
        "client2 enrolled; log:\n{}",
        mesh.log("n1")
    );
    let uid = mesh.uid("client2");
    let old = netns_id(mesh.topo.ns("client2"));
    assert!(mesh.tunnel_pods("n1").contains(&old));
    let repairs = mesh.repairs("n1", "sandbox");

    // A new netns holding the pod's IP, and the pod's process now lives there; the old
    // sandbox's process is gone. No CNI ADD tells the agent.
    let new = Netns::create(&format!("{}-client2-b", mesh.topo.prefix())).expect("a netns");
    for args in [
        &["link", "set", "lo", "up"][..],
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
        &["addr", "add", "10.77.1.11/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
    ] {
        new.ip(args).expect("setting up the new sandbox");
    }
    let index = mesh
        .topo
        .pods()
        .iter()
        .position(|p| p.name() == "client2")
        .expect("client2's sandbox");
    drop(mesh.sandboxes.remove(index));
    let sandbox = Sandbox::start(&new, mesh.topo.prefix(), &uid).expect("the new sandbox");
    mesh.sandboxes.push(sandbox);

    let new_id = netns_id(&new);
    assert_eventually!(
        {
            let pods = mesh.tunnel_pods("n1");
            pods.contains(&new_id) && !pods.contains(&old) && pods.matches(&uid).count() == 1
        },
        WAIT,
        "served from the new netns only: {}; log:\n{}",
        mesh.tunnel_pods("n1"),
        mesh.log("n1")
    );
    assert!(
        rules_in(&new).contains("-j ISTIO_OUTPUT"),
        "the new netns has the rules"
    );
    assert_eventually!(
        mesh.repairs("n1", "sandbox") > repairs && mesh.unprotected("n1") == Some(0.0),
        WAIT,
        "the re-enrollment counted, gauge 0: {:?}",
        mesh.unprotected("n1")
    );
    let log = mesh.log("n1");
    assert!(
        log.lines()
            .any(|l| l.contains("sandbox was replaced") && l.contains("default/client2")),
        "{log}"
    );
}

/// Makes `iptables-restore` fail for `node`'s agent (`broken`) or run the real one again.
fn break_iptables_restore(mesh: &Mesh, node: &str, broken: bool) {
    use std::os::unix::fs::PermissionsExt;
    let double = mesh.tools_dir(node).join("iptables-restore");
    if !broken {
        std::fs::remove_file(&double).expect("removing the iptables-restore double");
        return;
    }
    // Written aside and renamed: the agent never executes a half-written file.
    let aside = mesh.tools_dir(node).join(".iptables-restore");
    std::fs::write(
        &aside,
        "#!/bin/sh\necho 'iptables-restore: broken by the test' >&2\nexit 1\n",
    )
    .expect("writing the iptables-restore double");
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755))
        .expect("making the double executable");
    std::fs::rename(&aside, &double).expect("putting the double in place");
}

/// The fail-closed `prohibit` ip rules in `ns`, IPv4 and IPv6 (empty when none).
fn block_rules(ns: &Netns) -> String {
    let mut out = String::new();
    for family in ["-4", "-6"] {
        let rules = ns
            .exec("ip", &[family, "rule", "show"])
            .expect("ip rule show in the pod");
        for line in rules.lines().filter(|l| l.contains("prohibit")) {
            out.push_str(family);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn rules_that_cannot_be_rewritten_fail_closed_until_they_are_back() {
    let Some(mesh) = Mesh::start("cni_agent_failclosed") else {
        return;
    };
    let _server = mesh.server();
    // A server outside the mesh, recording who reaches it.
    let plain = mesh.topo.pod("plain");
    let outside = Server::start(plain.ns(), (plain.ip(), SERVER_PORT).into(), echo_handler)
        .expect("starting the server outside the mesh");
    mesh.label_default(true);
    for (pod, node) in [("client", "n1"), ("client2", "n1"), ("server", "n2")] {
        assert_eventually!(
            mesh.enrolled(pod, node),
            WAIT,
            "{pod} enrolled; log:\n{}",
            mesh.log(node)
        );
    }
    assert_eventually!(
        mesh.unprotected("n1") == Some(0.0),
        WAIT,
        "gauge on n1: {:?}; log:\n{}",
        mesh.unprotected("n1"),
        mesh.log("n1")
    );
    let ns = mesh.topo.ns("client");
    let written = rule_lines(&mesh.pod_rules("client"));
    assert_eq!(block_rules(ns), "", "no block while the rules are intact");

    // iptables-restore breaks for the agent, then the pod's rules are flushed.
    break_iptables_restore(&mesh, "n1", true);
    for table in ["nat", "mangle"] {
        ns.exec("iptables", &["-t", table, "-F"])
            .expect("flushing inside the pod");
    }

    // The pass cannot write them again: the pod is counted, named in the log with why, and
    // blocked below iptables.
    assert_eventually!(
        mesh.unprotected("n1") == Some(1.0),
        WAIT,
        "gauge on n1 with the rules unrestorable: {:?}; log:\n{}",
        mesh.unprotected("n1"),
        mesh.agents["n1"].process.log_tail(40)
    );
    assert!(
        !mesh.pod_rules("client").contains("-j ISTIO_OUTPUT"),
        "the rules stayed gone (iptables-restore is broken)"
    );
    let blocked = block_rules(ns);
    assert!(
        blocked.contains("-4 ") && blocked.contains("not from all fwmark 0x539/0xfff"),
        "the block is in place:\n{blocked}"
    );
    let log = mesh.agents["n1"].process.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pod enrolled but unprotected")
                && l.contains("default/client")
                && l.contains("re-writing them failed")
                && l.contains("broken by the test")
                && l.contains("blocked")),
        "{log}"
    );
    // The pod's plaintext connection outside the mesh never arrives.
    let client_ip = mesh.topo.pod("client").ip();
    let attempt = ns.run(move || connect_from(client_ip, (addr::NON_MESH, SERVER_PORT).into()));
    assert!(
        attempt.is_err(),
        "a connection out of the unprotected pod was let through"
    );
    assert!(
        outside.peers().is_empty(),
        "the server outside the mesh was reached: {:?}",
        outside.peers()
    );
    // Other pods on the node are untouched.
    assert_eq!(block_rules(mesh.topo.ns("client2")), "");
    mesh.echo("client2").expect("client2's traffic");

    // The tool works again: the rules return, the block goes, the gauge reads 0.
    let crossed = hbone_lines(&mesh, "n2", "client");
    break_iptables_restore(&mesh, "n1", false);
    assert_eventually!(
        rule_lines(&mesh.pod_rules("client")) == written && block_rules(ns).is_empty(),
        WAIT,
        "rules restored, block lifted:\n{}\n{}\nlog:\n{}",
        mesh.pod_rules("client"),
        block_rules(ns),
        mesh.log("n1")
    );
    assert_eventually!(
        mesh.unprotected("n1") == Some(0.0),
        WAIT,
        "gauge back to 0: {:?}",
        mesh.unprotected("n1")
    );
    let log = mesh.log("n1");
    assert!(
        log.lines()
            .any(|l| l.contains("fail-closed block is lifted") && l.contains("default/client")),
        "{log}"
    );
    // And the pod's traffic crosses HBONE again.
    mesh.echo("client").expect("traffic after the repair");
    assert_eventually!(
        hbone_lines(&mesh, "n2", "client") > crossed,
        WAIT,
        "the connection after the repair crossed HBONE"
    );
    assert!(outside.peers().is_empty(), "{:?}", outside.peers());
}
