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

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nodetunnel_testbed::cni::{Attachment, ConfList, Runner};
use nodetunnel_testbed::inpod::{InpodRules, PodTopology};
use nodetunnel_testbed::kube_api::KubeApi;
use nodetunnel_testbed::process::NsProcess;
use nodetunnel_testbed::sandbox::Sandbox;
use nodetunnel_testbed::traffic::echo_handler;
use nodetunnel_testbed::tunnel::http_get_status;
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available,
    shared_tunnel_env, workspace_binary, Ca, ControlPlane, Mesh as MeshSource, MeshConfig, Netns,
    Server, Tunnel, Workload,
};

const SERVER_PORT: u16 = 8080;
const REDIRECTION: &str = "ambient.istio.io/redirection";
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
const HEALTH_PORT: u16 = 18000;
const WAIT: Duration = Duration::from_secs(20);

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel-cni-agent"))
}

fn plugin_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel-cni"))
}

fn tunnel_bin() -> PathBuf {
    workspace_binary("nodetunnel").expect("the nodetunnel binary")
}

fn control_bin() -> PathBuf {
    workspace_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

/// A uid per (topology, pod name), in the UUID shape kubelet puts into cgroup paths. Unique
/// per topology: tests run in parallel on one machine, and an agent scanning `/proc` must not
/// find another test's pod (same name and IP) under its uid.
fn uid_of(topology: &str, name: &str) -> String {
    let name = format!("{topology}/{name}");
    // FNV-1a, folded to the 48 bits of the UUID's last group.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("0000aaaa-0000-4000-8000-{:012x}", hash & 0xffff_ffff_ffff)
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

/// One node's agent process, with its directories.
struct NodeAgent {
    process: NsProcess,
    run_dir: PathBuf,
    net_dir: PathBuf,
    bin_dir: PathBuf,
    zds: PathBuf,
}

struct Mesh {
    // Drop order: processes before the topology removes their directory.
    tunnels: BTreeMap<String, Tunnel>,
    agents: BTreeMap<String, NodeAgent>,
    _sandboxes: Vec<Sandbox>,
    control: ControlPlane,
    kube: KubeApi,
    topo: PodTopology,
}

impl Mesh {
    fn start(test: &str) -> Option<Mesh> {
        Mesh::start_with(test, MeshConfig::standard(SERVER_PORT))
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
                &uid_of(topo.prefix(), p.name()),
                namespace,
                p.name(),
                p.node(),
                p.ip(),
            ));
            sandboxes.push(
                Sandbox::start(p.ns(), topo.prefix(), &uid_of(topo.prefix(), p.name()))
                    .expect("a sandbox"),
            );
        }
        let mut mesh = Mesh {
            tunnels: BTreeMap::new(),
            agents: BTreeMap::new(),
            _sandboxes: sandboxes,
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

    fn start_agent(&self, node: &str) -> NodeAgent {
        let dir = self.topo.path(&format!("{node}-agent"));
        let (run_dir, net_dir, bin_dir) = (dir.join("run"), dir.join("net.d"), dir.join("bin"));
        for d in [&run_dir, &net_dir, &bin_dir] {
            std::fs::create_dir_all(d).expect("creating the agent's directories");
        }
        std::fs::write(
            net_dir.join("10-primary.conflist"),
            primary_conflist(self.topo.node(node).ip(), &dir.join("ipam")).to_string(),
        )
        .expect("writing the primary conflist");
        let zds = dir.join("ztunnel.sock");
        let env = [
            ("NODE_NAME", node.to_string()),
            ("POD_NAMESPACE", "istio-system".into()),
            (
                "KUBECONFIG",
                self.topo.path("kubeconfig").display().to_string(),
            ),
            ("CNI_AGENT_RUN_DIR", run_dir.display().to_string()),
            ("ZTUNNEL_UDS_ADDRESS", zds.display().to_string()),
            ("MOUNTED_CNI_NET_DIR", net_dir.display().to_string()),
            ("HOST_CNI_BIN_DIR", bin_dir.display().to_string()),
            ("CNI_PLUGIN_BINARY", plugin_bin().display().to_string()),
            ("PROC_ROOT", "/proc".into()),
            ("HEALTH_ADDR", format!("127.0.0.1:{HEALTH_PORT}")),
            (
                "LOG_LEVEL",
                "info,kube=warn,nodetunnel_cni::agent=debug".into(),
            ),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let process = NsProcess::spawn(
            "cni agent",
            self.topo.node_ns(node),
            agent_bin(),
            &[],
            &env,
            &dir.join("agent.log"),
        )
        .expect("starting the agent");
        NodeAgent {
            process,
            run_dir,
            net_dir,
            bin_dir,
            zds,
        }
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
        uid_of(self.topo.prefix(), pod)
    }

    fn pod_annotation(&self, name: &str) -> Option<String> {
        let namespace = if self.topo.pod(name).mesh() {
            "default"
        } else {
            "other"
        };
        self.kube
            .pod(namespace, name)
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get(REDIRECTION).cloned())
    }

    /// `iptables-save` inside the pod.
    fn pod_rules(&self, name: &str) -> String {
        self.topo
            .ns(name)
            .exec("iptables-save", &[])
            .expect("iptables-save in the pod")
    }

    fn tunnel_pods(&self, node: &str) -> String {
        self.tunnels[node]
            .config_dump()
            .map(|d| d["pods"].to_string())
            .unwrap_or_default()
    }

    fn connect(&self, from: &str, dst: SocketAddr) -> io::Result<TcpStream> {
        let pod = self.topo.pod(from);
        let ip = pod.ip();
        pod.ns().run(move || connect_from(ip, dst))
    }

    fn server(&self) -> Server {
        let pod = self.topo.pod("server");
        Server::start(pod.ns(), (pod.ip(), SERVER_PORT).into(), echo_handler)
            .expect("starting the server")
    }

    fn echo(&self, from: &str) -> io::Result<()> {
        let mut s = self.connect(from, (addr::SERVER, SERVER_PORT).into())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        Ok(())
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
        self.pod_annotation(pod).as_deref() == Some("enabled")
            && self.pod_rules(pod).contains("-j ISTIO_OUTPUT")
            && self.tunnel_pods(node).contains(&self.uid(pod))
    }

    /// Like [`enrolled`](Self::enrolled) for a pod whose namespace is `ns` (one the test made
    /// itself rather than the topology).
    fn enrolled_ns(&self, pod: &str, ns: &Netns, node: &str) -> bool {
        let namespace = "default";
        let annotated = self
            .kube
            .pod(namespace, pod)
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get(REDIRECTION).cloned());
        annotated.as_deref() == Some("enabled")
            && ns
                .exec("iptables-save", &[])
                .is_ok_and(|r| r.contains("-j ISTIO_OUTPUT"))
            && self.tunnel_pods(node).contains(&self.uid(pod))
    }

    fn unenrolled(&self, pod: &str, node: &str) -> bool {
        self.pod_annotation(pod).is_none()
            && !self.pod_rules(pod).contains("ISTIO")
            && !self.tunnel_pods(node).contains(&self.uid(pod))
    }
}

/// The node's primary CNI config, as a simple routed CNI would write it: `ptp` with
/// host-local handing out the single address .30 of the node's /24 (so a deleted pod's
/// address goes to the next pod at once, as on a busy node), the node's address as gateway.
fn primary_conflist(node_ip: Ipv4Addr, ipam_dir: &Path) -> serde_json::Value {
    let [a, b, c, _] = node_ip.octets();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [{
            "type": "ptp",
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{
                    "subnet": format!("{a}.{b}.{c}.0/24"),
                    "rangeStart": format!("{a}.{b}.{c}.30"),
                    "rangeEnd": format!("{a}.{b}.{c}.30"),
                    "gateway": node_ip.to_string()
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        }]
    })
}

fn ipset_members(mesh: &Mesh, node: &str) -> String {
    mesh.topo
        .node_ns(node)
        .exec("ipset", &["list", "istio-inpod-probes-v4"])
        .unwrap_or_default()
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
    let conflist: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.net_dir.join("10-primary.conflist")).expect("the primary conflist"),
    )
    .expect("JSON");
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["ptp", "nodetunnel-cni"]);

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
    for (pod, node) in [("client", "n1"), ("server", "n2")] {
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
    // The runtime's first free address on n1 is .30; the mesh knows a workload there.
    let fresh_ip = Ipv4Addr::new(10, 77, 1, 30);
    let config =
        MeshConfig::standard(SERVER_PORT).with_workload(Workload::new("fresh", fresh_ip, "n1"));
    let Some(mesh) = Mesh::start_with("cni_agent_add", config) else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    assert_eventually!(
        mesh.enrolled("server", "n2"),
        WAIT,
        "server enrolled; log:\n{}",
        mesh.log("n2")
    );

    // Kubelet: the Pod object exists (Pending, no IP yet), then the runtime creates the
    // sandbox netns and runs the node's CNI config — the one our agent rewrote — with the
    // plugins it finds in the host CNI bin dir, where the agent installed ours.
    let uid = mesh.uid("fresh");
    let mut pending = pod(&uid, "default", "fresh", "n1", fresh_ip);
    pending.status = Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
    mesh.kube.put_pod(pending);
    let sandbox =
        Netns::create(&format!("{}-fresh", mesh.topo.prefix())).expect("the sandbox netns");
    let agent = &mesh.agents["n1"];
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.net_dir.join("10-primary.conflist")).expect("the node's CNI config"),
    )
    .expect("JSON");
    let list = ConfList::parse(&list).expect("a conflist");
    assert_eq!(list.plugin_types(), ["ptp", "nodetunnel-cni"]);
    let runner = Runner::new(vec![PathBuf::from("/usr/lib/cni"), agent.bin_dir.clone()]);
    let attachment = Attachment {
        container_id: format!("{}-fresh", mesh.topo.prefix()),
        netns: sandbox.path(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fresh".into(),
    };
    let result = {
        let (runner, list, attachment) = (runner.clone(), list.clone(), attachment.clone());
        mesh.topo
            .node_ns("n1")
            .run(move || runner.add(&list, &attachment))
            .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")))
    };
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
        .put_pod(pod(&uid, "default", "fresh", "n1", fresh_ip));

    // Its traffic crosses HBONE with its own identity.
    let echo = || -> io::Result<()> {
        let mut s =
            sandbox.run(move || connect_from(fresh_ip, (addr::SERVER, SERVER_PORT).into()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
    };
    echo().expect("traffic from the new pod");
    let inbound = mesh.tunnels["n2"].wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("src_identity", "spiffe://cluster.local/ns/default/sa/fresh"),
        ],
        WAIT,
    );
    assert!(inbound.contains("10.77.1.30"), "{inbound}");

    // The pod is deleted. The runtime's DEL frees its address, and a new pod (`fresh2`) gets
    // the same address before the API server tells the agent `fresh` is gone: the late
    // removal of `fresh` must not take `fresh2`'s probe entry with it.
    let node = mesh.topo.node_ns("n1");
    {
        let (runner, list, attachment, result) = (
            runner.clone(),
            list.clone(),
            attachment.clone(),
            result.clone(),
        );
        node.run(move || runner.del(&list, &attachment, Some(&result)))
            .expect("CNI DEL");
    }
    let uid2 = mesh.uid("fresh2");
    let mut pending = pod(&uid2, "default", "fresh2", "n1", fresh_ip);
    pending.status = Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
    mesh.kube.put_pod(pending);
    let sandbox2 =
        Netns::create(&format!("{}-fresh2", mesh.topo.prefix())).expect("the second sandbox netns");
    let attachment2 = Attachment {
        container_id: format!("{}-fresh2", mesh.topo.prefix()),
        netns: sandbox2.path(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fresh2".into(),
    };
    let result2 = {
        let (runner, list, attachment) = (runner.clone(), list.clone(), attachment2.clone());
        node.run(move || runner.add(&list, &attachment))
            .unwrap_or_else(|e| panic!("CNI ADD of fresh2: {e}; agent log:\n{}", mesh.log("n1")))
    };
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
    node.run(move || runner.del(&list, &attachment2, Some(&result2)))
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
    let Some(mesh) = Mesh::start("cni_agent_pod_labels") else {
        return;
    };
    let relabel = |name: &str, value: Option<&str>| {
        let mut pod = mesh.kube.pod("default", name).expect("the pod");
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        match value {
            Some(v) => labels.insert(DATAPLANE_MODE.into(), v.into()),
            None => labels.remove(DATAPLANE_MODE),
        };
        mesh.kube.put_pod(pod);
    };
    // A host-network pod on n1 (it shares the node's address): never touched.
    let mut hostnet = pod(
        &mesh.uid("hostnet"),
        "default",
        "hostnet",
        "n1",
        addr::NODE1,
    );
    hostnet.spec.as_mut().unwrap().host_network = Some(true);
    mesh.kube.put_pod(hostnet);

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
    let hostnet = mesh.kube.pod("default", "hostnet").expect("hostnet");
    assert!(
        !hostnet
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(REDIRECTION),
        "a host-network pod must never be enrolled"
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

/// `dev:inode` of a namespace file, as the tunnel's `/config_dump` shows a pod's netns.
fn netns_id(ns: &Netns) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(ns.path()).expect("the netns file");
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn a_recreated_sandbox_replaces_the_old_one_in_the_tunnel() {
    let fresh_ip = Ipv4Addr::new(10, 77, 1, 30);
    let config =
        MeshConfig::standard(SERVER_PORT).with_workload(Workload::new("fresh", fresh_ip, "n1"));
    let Some(mesh) = Mesh::start_with("cni_agent_resandbox", config) else {
        return;
    };
    let _server = mesh.server();
    mesh.label_default(true);
    assert_eventually!(
        mesh.enrolled("server", "n2"),
        WAIT,
        "server enrolled; log:\n{}",
        mesh.log("n2")
    );
    let uid = mesh.uid("fresh");
    mesh.kube
        .put_pod(pod(&uid, "default", "fresh", "n1", fresh_ip));
    let agent = &mesh.agents["n1"];
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.net_dir.join("10-primary.conflist")).expect("the node's CNI config"),
    )
    .expect("JSON");
    let list = ConfList::parse(&list).expect("a conflist");
    let runner = Runner::new(vec![PathBuf::from("/usr/lib/cni"), agent.bin_dir.clone()]);
    let node = mesh.topo.node_ns("n1");
    let attach = |sandbox: &Netns, n: u32| Attachment {
        container_id: format!("{}-fresh-{n}", mesh.topo.prefix()),
        netns: sandbox.path(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fresh".into(),
    };

    // The first sandbox, enrolled by its ADD.
    let first = Netns::create(&format!("{}-fresh-1", mesh.topo.prefix())).expect("a sandbox");
    let attachment = attach(&first, 1);
    let result = {
        let (runner, list, attachment) = (runner.clone(), list.clone(), attachment.clone());
        node.run(move || runner.add(&list, &attachment))
            .unwrap_or_else(|e| panic!("CNI ADD: {e}; agent log:\n{}", mesh.log("n1")))
    };
    assert!(mesh.tunnel_pods("n1").contains(&netns_id(&first)));

    // It dies; kubelet DELs it (a no-op for our plugin) and creates a new sandbox for the
    // same pod, same uid, which the runtime ADDs: the tunnel must serve the pod from the new
    // namespace, and only from it.
    {
        let (runner, list) = (runner.clone(), list.clone());
        node.run(move || runner.del(&list, &attachment, Some(&result)))
            .expect("CNI DEL");
    }
    let second = Netns::create(&format!("{}-fresh-2", mesh.topo.prefix())).expect("a sandbox");
    let attachment = attach(&second, 2);
    {
        let (runner, list) = (runner.clone(), list.clone());
        node.run(move || runner.add(&list, &attachment))
            .unwrap_or_else(|e| panic!("CNI ADD again: {e}; agent log:\n{}", mesh.log("n1")));
    }
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
        second
            .exec("iptables-save", &[])
            .is_ok_and(|r| r.contains("-j ISTIO_OUTPUT")),
        "the new sandbox has the rules"
    );
    let echo = || -> io::Result<()> {
        let mut s =
            second.run(move || connect_from(fresh_ip, (addr::SERVER, SERVER_PORT).into()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
    };
    echo().expect("traffic from the new sandbox");
    mesh.tunnels["n2"].wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            ("src_identity", "spiffe://cluster.local/ns/default/sa/fresh"),
        ],
        WAIT,
    );
}
