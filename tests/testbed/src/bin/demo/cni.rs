//! The CNI node agent story (`nodetunnel-demo cni`): pods start with no rules at all; a
//! `nodetunnel-cni-agent` per node watches a Kubernetes API stand-in and, once namespace
//! `default` is labelled `istio.io/dataplane-mode=ambient`, finds the running pods under `/proc`,
//! programs their in-pod rules, hands their network namespaces to the node's tunnel over ZDS and
//! annotates them. Removing the label undoes all of it.
//!
//! Like the test `cni-plugin/tests/agent.rs`, but told for a person watching. The demo only
//! drives binaries: the agent, the plugin it installs, the tunnel and the control plane.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nodetunnel_testbed::cni_agent::{
    pod_uid, primary_conflist, CniAgent, CniAgentSpec, HEALTH_PORT,
};
use nodetunnel_testbed::eventually::wait_until;
use nodetunnel_testbed::kube_api::{KubeApi, PodBuilder};
use nodetunnel_testbed::sandbox::Sandbox;
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::tunnel::{field, http_get};
use nodetunnel_testbed::{
    addr, connect_from, env_refs, generate_ca, shared_tunnel_env, sibling_binary, Ca, ControlPlane,
    InpodRules, Mesh, MeshConfig, PodTopology, Server, Tunnel,
};

use crate::{identity_of, section, summarize, tell_control_plane, Bins, DemoResult};

const SERVER_PORT: u16 = 8080;
/// The label that puts a namespace's pods in the mesh, and the annotation the agent sets on
/// every pod it enrolled (Istio's names; the agent reads and writes the same).
const DATAPLANE_MODE: (&str, &str) = ("istio.io/dataplane-mode", "ambient");
const REDIRECTION: &str = "ambient.istio.io/redirection";
/// Generous: enrollment is a watch event, a `/proc` scan, iptables-restore and a ZDS round trip.
const WAIT: Duration = Duration::from_secs(20);
const NODES: [&str; 2] = ["n1", "n2"];
/// The pods in namespace `default` (the one that gets the label), with their nodes.
const MESH_PODS: [(&str, &str); 3] = [("client", "n1"), ("client2", "n1"), ("server", "n2")];

/// The binaries this story drives besides the tunnel and the control plane.
struct CniBins {
    agent: PathBuf,
    plugin: PathBuf,
}

/// Everything the story runs. Field order is drop order: processes go before the sandboxes,
/// the API stand-in and the topology that holds their directories.
struct Stage {
    tunnels: BTreeMap<&'static str, Tunnel>,
    agents: BTreeMap<&'static str, CniAgent>,
    sandboxes: Vec<Sandbox>,
    control: ControlPlane,
    kube: KubeApi,
    config: MeshConfig,
    topo: PodTopology,
}

pub fn run(bins: &Bins) -> DemoResult {
    let cni = CniBins {
        agent: sibling_binary("nodetunnel-cni-agent")?,
        plugin: sibling_binary("nodetunnel-cni")?,
    };
    println!(
        "nodetunnel demo, the CNI node agent enrolling running pods — agent {}",
        cni.agent.display()
    );
    let mut stage = Stage::build(bins)?;
    // After the build: building a topology sweeps stale namespaces, killing what ran inside,
    // so a killed run's sandboxes are gone and their cgroups can be removed.
    nodetunnel_testbed::sandbox::sweep_stale_cgroups();
    stage.tell_topology();

    section("Control plane (in n1's netns)");
    tell_control_plane(&stage.control, &stage.config);

    stage.start_nodes(bins, &cni)?;
    let server = stage.server()?;
    stage.before_label(&server)?;
    stage.label(&server)?;
    stage.unlabel(&server)?;

    section("Cleaning up");
    drop(server);
    stage.stop();
    Ok(())
}

impl Stage {
    /// The topology (pods without any rules), the control plane, the API stand-in with one
    /// Pod object and one sandbox process per pod.
    fn build(bins: &Bins) -> DemoResult<Stage> {
        let topo = PodTopology::two_node("demo", InpodRules::Skip)?;
        let config = MeshConfig::standard(SERVER_PORT);
        let config_path = topo.path("mesh.yaml");
        config.write(&config_path)?;
        let ca = topo.path("ca");
        std::fs::create_dir_all(&ca)?;
        generate_ca(&bins.tunnel, &ca)?;
        let control = topo.start_control_plane("n1", &bins.control, &config_path, &ca, &[])?;
        let kube = KubeApi::start(Some(topo.node_ns("n1")), addr::NODE1)?;
        kube.write_kubeconfig(&topo.path("kubeconfig"))?;
        kube.put_namespace("default", &[]);
        kube.put_namespace("other", &[]);
        let mut sandboxes = Vec::new();
        for p in topo.pods() {
            let uid = pod_uid(topo.prefix(), p.name());
            kube.put_pod(
                PodBuilder::new(namespace_of(&topo, p.name()), p.name())
                    .uid(&uid)
                    .node(p.node())
                    .ip(IpAddr::V4(p.ip()))
                    .service_account(p.name())
                    .build(),
            );
            sandboxes.push(Sandbox::start(p.ns(), topo.prefix(), &uid)?);
        }
        Ok(Stage {
            tunnels: BTreeMap::new(),
            agents: BTreeMap::new(),
            sandboxes,
            control,
            kube,
            config,
            topo,
        })
    }

    fn tell_topology(&self) {
        section("Topology: two node netns joined by a veth; every pod its own netns, NO rules yet");
        for node in self.topo.nodes() {
            println!(
                "  node {} {:<10} netns {}",
                node.name(),
                node.ip().to_string(),
                node.ns().name()
            );
            for pod in self.topo.pods_on(node.name()) {
                println!(
                    "      pod {:<8} {:<11} k8s namespace {:<8} {}",
                    pod.name(),
                    pod.ip().to_string(),
                    namespace_of(&self.topo, pod.name()),
                    identity_of(&self.config, pod.ip())
                );
            }
        }
        println!(
            "  Kubernetes API stand-in on {} (in n1's netns): namespaces default, other (no labels);",
            self.kube.url()
        );
        println!(
            "  one Running Pod object per pod (nodeName, podIP, serviceAccountName = pod name)"
        );
        let pids: Vec<String> = self.sandboxes.iter().map(|s| s.pid().to_string()).collect();
        println!(
            "  a sandbox process per pod (pids {}) in cgroup …/pod<uid>, as kubelet leaves it:",
            pids.join(" ")
        );
        println!("  that is how the agent finds a running pod's netns under /proc");
    }

    /// Step 1: per node an agent, then a shared-mode tunnel on the agent's ZDS socket.
    fn start_nodes(&mut self, bins: &Bins, cni: &CniBins) -> DemoResult {
        section("1) per node: nodetunnel-cni-agent, then a tunnel (PROXY_MODE=shared) on its ZDS socket");
        let started = Instant::now();
        for node in NODES {
            let agent = self.start_agent(node, cni)?;
            self.agents.insert(node, agent);
            let t0 = Instant::now();
            let tunnel = self.start_tunnel(node, bins)?;
            let agent = &self.agents[node];
            println!(
                "  {node}: agent pid {}, tunnel pid {} ready {} ms after it started (the agent's ZDS snapshot: {} pods)",
                agent.process.pid(),
                tunnel.pid(),
                t0.elapsed().as_millis(),
                pod_count(&tunnel)
            );
            self.tunnels.insert(node, tunnel);
        }
        for (node, answers) in self.wait_agents_ready(started)? {
            let steps: Vec<String> = answers
                .into_iter()
                .map(|(at, answer)| match answer.as_str() {
                    "200" => format!("200 at {at} ms"),
                    _ => format!("503 \"{answer}\" at {at} ms"),
                })
                .collect();
            println!("  {node} agent /readyz: {}", steps.join(", "));
        }
        for node in NODES {
            self.tell_install(node)?;
        }
        Ok(())
    }

    fn start_agent(&self, node: &str, cni: &CniBins) -> DemoResult<CniAgent> {
        let dir = self.topo.path(&format!("{node}-agent"));
        // The primary network the agent chains its plugin into (not run here: the pods of
        // this story are already running, no sandbox is created through CNI).
        let conflist = primary_conflist(self.topo.node(node).ip(), &dir.join("ipam"));
        let spec = CniAgentSpec {
            node,
            agent_bin: &cni.agent,
            plugin_bin: &cni.plugin,
            kubeconfig: &self.topo.path("kubeconfig"),
            primary_conflist: &conflist,
            log_level: "info,kube=warn",
        };
        Ok(CniAgent::start(self.topo.node_ns(node), &dir, &spec)?)
    }

    fn start_tunnel(&self, node: &str, bins: &Bins) -> DemoResult<Tunnel> {
        let agent = &self.agents[node];
        let env = shared_tunnel_env(
            node,
            Mesh::Control(&self.control),
            Ca::Control(&self.control),
            &agent.zds,
        );
        let mut tunnel = self
            .topo
            .spawn_tunnel(node, &bins.tunnel, &env_refs(&env))?;
        if let Err(e) = tunnel.wait_ready(WAIT) {
            return Err(format!(
                "the {node} tunnel never got ready ({e}); agent log:\n{}",
                agent.process.log_tail(30)
            )
            .into());
        }
        Ok(tunnel)
    }

    /// Polls every agent's `/readyz` together until each answers 200; per node, the distinct
    /// "not ready" answers on the way (with when each was first seen) and when it turned 200,
    /// in ms since `since`.
    fn wait_agents_ready(
        &mut self,
        since: Instant,
    ) -> DemoResult<BTreeMap<&'static str, Vec<(u128, String)>>> {
        let mut seen: BTreeMap<&'static str, Vec<(u128, String)>> = BTreeMap::new();
        let mut ready_at: BTreeMap<&'static str, u128> = BTreeMap::new();
        wait_until(WAIT, || {
            for node in NODES {
                if ready_at.contains_key(node) {
                    continue;
                }
                let answer = self
                    .topo
                    .node_ns(node)
                    .run(|| http_get(HEALTH_PORT, "/readyz"));
                let at = since.elapsed().as_millis();
                match answer {
                    Ok((200, _)) => {
                        ready_at.insert(node, at);
                    }
                    Ok((_, body)) => {
                        let body = body.trim().trim_start_matches("not ready: ").to_string();
                        let answers = seen.entry(node).or_default();
                        if answers.last().is_none_or(|(_, last)| *last != body) {
                            answers.push((at, body));
                        }
                    }
                    Err(_) => {}
                }
            }
            ready_at.len() == NODES.len()
        });
        for node in NODES {
            let Some(at) = ready_at.get(node) else {
                let agent = self
                    .agents
                    .get_mut(node)
                    .ok_or_else(|| format!("no agent on {node}"))?;
                let exited = agent.process.try_wait()?;
                return Err(format!(
                    "the {node} agent is not ready after {WAIT:?} (exited: {exited:?}); log:\n{}",
                    agent.process.log_tail(30)
                )
                .into());
            };
            seen.entry(node).or_default().push((*at, "200".into()));
        }
        Ok(seen)
    }

    /// What the agent installed on its node: the conflist entry, the binary, the kubeconfig.
    fn tell_install(&self, node: &str) -> DemoResult {
        let agent = &self.agents[node];
        let types = agent.plugin_types()?;
        let binary = std::fs::metadata(agent.bin_dir.join("nodetunnel-cni"))
            .ok()
            .filter(std::fs::Metadata::is_file);
        let kubeconfig = agent.run_dir.join("istio-cni-kubeconfig").is_file();
        println!(
            "  {node} installed: 10-primary.conflist plugins {}; bin/nodetunnel-cni {}; run/istio-cni-kubeconfig {}",
            types.join(" → "),
            binary.as_ref().map_or("MISSING".into(), |m| format!("copied ({} MB)", m.len() >> 20)),
            if kubeconfig { "written" } else { "MISSING" },
        );
        let binary = binary.is_some();
        if types.last().map(String::as_str) != Some("nodetunnel-cni") || !binary || !kubeconfig {
            return Err(format!(
                "the {node} agent did not install the plugin; log:\n{}",
                agent.process.log_tail(30)
            )
            .into());
        }
        Ok(())
    }

    fn server(&self) -> DemoResult<Server> {
        let pod = self.topo.pod("server");
        Ok(Server::start(
            pod.ns(),
            (pod.ip(), SERVER_PORT).into(),
            echo_handler,
        )?)
    }

    /// One echo from pod client to the server app; returns the peer address the app saw, which
    /// must carry the client pod's IP (directly, or kept by the n2 tunnel).
    fn echo(&self, server: &Server, message: &'static [u8]) -> DemoResult<SocketAddr> {
        let seen = server.accepted();
        let dst: SocketAddr = (addr::SERVER, SERVER_PORT).into();
        let mut stream = self
            .topo
            .ns("client")
            .run(move || connect_from(addr::CLIENT, dst))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        echo_roundtrip(&mut stream, message)?;
        drop(stream);
        if !wait_until(Duration::from_secs(5), || server.accepted() > seen) {
            return Err("the server app never accepted the connection".into());
        }
        let peer = server
            .peers()
            .last()
            .copied()
            .ok_or("the server app saw no peer")?;
        if peer.ip() != IpAddr::V4(addr::CLIENT) {
            return Err(format!("the server app saw {peer}, not the client pod's address").into());
        }
        Ok(peer)
    }

    /// Step 2: no label yet, so nothing is programmed and traffic goes straight to the server.
    fn before_label(&self, server: &Server) -> DemoResult {
        section("2) pod client → pod server 10.77.2.10:8080 before any label: direct");
        let peer = self.echo(server, b"hello, not meshed yet")?;
        println!("  echo OK; the server app saw {peer} (the client pod itself)");
        let rules = istio_rules(&self.pod_rules("client")?);
        let hbone = self.hbone_inbound().len();
        println!(
            "  pod client has {} ISTIO rules; n2 tunnel access log: {hbone} lines with protocol=HBONE",
            rules.rules
        );
        if hbone != 0 || rules.rules != 0 {
            return Err("traffic was captured before the namespace was labelled".into());
        }
        Ok(())
    }

    /// Step 3 and 4: the label enrolls the running pods; then traffic crosses HBONE.
    fn label(&self, server: &Server) -> DemoResult {
        section("3) kubectl label namespace default istio.io/dataplane-mode=ambient");
        let labelled = Instant::now();
        self.kube.put_namespace("default", &[DATAPLANE_MODE]);
        let mut chains = Vec::new();
        for (pod, node) in MESH_PODS {
            self.wait_pod(pod, labelled, |annotation| {
                annotation.as_deref() == Some("enabled")
            })?;
            let rules = istio_rules(&self.pod_rules(pod)?);
            let listed = self.tunnel_lists(node, pod)?;
            println!(
                "      agent found it at {}; {} ISTIO rules in its netns; {node} tunnel /config_dump pods: {}",
                self.enrolled_netns(pod),
                rules.rules,
                if listed { "listed" } else { "NOT listed" }
            );
            if rules.rules == 0 || !listed {
                return Err(format!(
                    "{pod} is annotated but not fully enrolled; agent log:\n{}",
                    self.agents[node].process.log_tail(30)
                )
                .into());
            }
            chains.push((pod, rules.chains));
        }
        if chains.windows(2).all(|w| w[0].1 == w[1].1) {
            println!(
                "  ISTIO chains in each (iptables-save): {}",
                chains[0].1.join(" ")
            );
        } else {
            for (pod, chains) in &chains {
                println!(
                    "  ISTIO chains in {pod} (iptables-save): {}",
                    chains.join(" ")
                );
            }
        }
        for node in NODES {
            println!(
                "  {node} tunnel pods: {}",
                self.tunnel_pods(node)?.join(", ")
            );
        }
        let plain = self.annotation("plain");
        let plain_rules = istio_rules(&self.pod_rules("plain")?).rules;
        println!(
            "  plain (namespace other): annotation {}, {plain_rules} ISTIO rules — untouched",
            plain.as_deref().unwrap_or("none")
        );
        if plain.is_some() || plain_rules != 0 {
            return Err("pod plain (namespace other) was touched".into());
        }

        section("4) pod client → pod server again: over HBONE");
        let peer = self.echo(server, b"hello, meshed")?;
        println!(
            "  echo OK; the server app saw {}: the client pod's address, which the n2 tunnel kept",
            peer.ip()
        );
        let lines = self.wait_hbone_inbound(1)?;
        println!("  n2 tunnel (inbound) access log:");
        println!("      {}", summarize(&lines[0]));
        let identity = "spiffe://cluster.local/ns/default/sa/client";
        if !lines[0].contains(identity) {
            return Err(format!("the inbound line lacks {identity}: {}", lines[0]).into());
        }
        Ok(())
    }

    /// Step 5: the label removed; every trace of the enrollment goes.
    fn unlabel(&self, server: &Server) -> DemoResult {
        section("5) kubectl label namespace default istio.io/dataplane-mode-");
        let unlabelled = Instant::now();
        self.kube.put_namespace("default", &[]);
        for (pod, node) in MESH_PODS {
            self.wait_pod(pod, unlabelled, Option::is_none)?;
            let rules = istio_rules(&self.pod_rules(pod)?).rules;
            let listed = self.tunnel_lists(node, pod)?;
            println!(
                "      {rules} ISTIO rules left; {node} tunnel /config_dump pods: {}",
                if listed { "STILL listed" } else { "gone" }
            );
            if rules != 0 || listed {
                return Err(format!(
                    "{pod} lost its annotation but is still enrolled; agent log:\n{}",
                    self.agents[node].process.log_tail(30)
                )
                .into());
            }
        }
        if let Some(reason) = self.leave_reason("n1", "client") {
            println!("  why (n1 agent log): {reason}");
        }
        let hbone_before = self.hbone_inbound().len();
        let peer = self.echo(server, b"hello, direct again")?;
        // An access line is written when its connection ends; give a stray one time to show.
        wait_until(Duration::from_millis(500), || {
            self.hbone_inbound().len() > hbone_before
        });
        let hbone_after = self.hbone_inbound().len();
        println!(
            "  client → server: echo OK, the server app saw {peer}; n2 HBONE access lines still {hbone_after}: direct again"
        );
        if hbone_after != hbone_before {
            return Err("traffic still crossed HBONE after the label was removed".into());
        }
        Ok(())
    }

    /// Polls until `done(annotation)` holds for `pod`; prints when.
    fn wait_pod(
        &self,
        pod: &str,
        since: Instant,
        done: impl Fn(&Option<String>) -> bool,
    ) -> DemoResult {
        let mut annotation = None;
        if !wait_until(WAIT, || {
            annotation = self.annotation(pod);
            done(&annotation)
        }) {
            let node = self.topo.pod(pod).node();
            return Err(format!(
                "{pod}: annotation {annotation:?} after {WAIT:?}; agent log:\n{}",
                self.agents[node].process.log_tail(30)
            )
            .into());
        }
        let what = match &annotation {
            Some(value) => format!("got {REDIRECTION}={value}"),
            None => format!("lost {REDIRECTION}"),
        };
        println!(
            "  {pod:<8} ({}) {what} after {} ms",
            self.topo.pod(pod).node(),
            since.elapsed().as_millis()
        );
        Ok(())
    }

    fn annotation(&self, pod: &str) -> Option<String> {
        self.kube
            .pod(namespace_of(&self.topo, pod), pod)
            .and_then(|p| p.metadata.annotations)
            .and_then(|a| a.get(REDIRECTION).cloned())
    }

    /// `iptables-save` inside the pod's netns.
    fn pod_rules(&self, pod: &str) -> DemoResult<String> {
        Ok(self.topo.ns(pod).exec("iptables-save", &[])?)
    }

    /// `<namespace>/<name>` of every pod in the node tunnel's `/config_dump`.
    fn tunnel_pods(&self, node: &str) -> DemoResult<Vec<String>> {
        let dump = self.tunnels[node].config_dump()?;
        Ok(dump["pods"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .map(|p| p["workload"].as_str().unwrap_or("?").to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The agent's `pod enrolled` log line for `pod`: the netns path it found under `/proc`,
    /// and whether that is the pod's sandbox process.
    fn enrolled_netns(&self, pod: &str) -> String {
        let node = self.topo.pod(pod).node();
        let needle = format!("pod enrolled pod={}/{pod} ", namespace_of(&self.topo, pod));
        let log = self.agents[node].process.log();
        let Some(netns) = log
            .lines()
            .rfind(|l| l.contains(&needle))
            .and_then(|l| field(l, "netns"))
        else {
            return "(no `pod enrolled` line in its log)".into();
        };
        let index = self.topo.pods().iter().position(|p| p.name() == pod);
        let sandbox = index.and_then(|i| self.sandboxes.get(i)).map(Sandbox::pid);
        match sandbox {
            Some(pid) if netns == format!("/proc/{pid}/ns/net") => format!("{netns} (its sandbox)"),
            _ => netns.to_string(),
        }
    }

    /// The reason in the agent's last `pod leaves the mesh` line for `pod`.
    fn leave_reason(&self, node: &str, pod: &str) -> Option<String> {
        let needle = format!(
            "pod leaves the mesh pod=\"{}/{pod}\"",
            namespace_of(&self.topo, pod)
        );
        let log = self.agents[node].process.log();
        let line = log.lines().rfind(|l| l.contains(&needle))?;
        Some(line.split_once("reason=")?.1.to_string())
    }

    /// Whether the node's tunnel has a proxy for `pod` (by uid).
    fn tunnel_lists(&self, node: &str, pod: &str) -> DemoResult<bool> {
        let uid = pod_uid(self.topo.prefix(), pod);
        let dump = self.tunnels[node].config_dump()?;
        Ok(dump["pods"]
            .as_array()
            .is_some_and(|pods| pods.iter().any(|p| p["uid"] == uid.as_str())))
    }

    fn hbone_inbound(&self) -> Vec<String> {
        self.tunnels["n2"].access_lines(&[("direction", "inbound"), ("protocol", "HBONE")])
    }

    fn wait_hbone_inbound(&self, at_least: usize) -> DemoResult<Vec<String>> {
        let mut lines = Vec::new();
        wait_until(WAIT, || {
            lines = self.hbone_inbound();
            lines.len() >= at_least
        });
        if lines.len() < at_least {
            return Err(format!(
                "no inbound HBONE access line on n2; tunnel log tail:\n{}",
                self.tunnels["n2"].log_tail(20)
            )
            .into());
        }
        Ok(lines)
    }

    /// Tunnels first, then the agents (SIGTERM: each removes its plugin from the conflist).
    fn stop(self) {
        let status = |s: Option<std::process::ExitStatus>| s.map_or("?".into(), |s| s.to_string());
        for (node, tunnel) in self.tunnels {
            println!("  {node}: tunnel stopped ({})", status(tunnel.stop()));
        }
        for (node, mut agent) in self.agents {
            let exit = status(agent.process.terminate());
            let types = agent
                .plugin_types()
                .map_or_else(|e| format!("unreadable: {e}"), |t| t.join(" → "));
            println!(
                "  {node}: agent stopped ({exit}); it removed its entry: conflist plugins {types}"
            );
        }
    }
}

/// Pods named in [`MESH_PODS`] live in `default`, the rest (`plain`) in `other`.
fn namespace_of(topo: &PodTopology, pod: &str) -> &'static str {
    if topo.pod(pod).mesh() {
        "default"
    } else {
        "other"
    }
}

fn pod_count(tunnel: &Tunnel) -> usize {
    tunnel
        .config_dump()
        .ok()
        .and_then(|d| d["pods"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The ISTIO part of an `iptables-save` dump.
struct IstioRules {
    /// `<table>/<chain>` of each chain named ISTIO….
    chains: Vec<String>,
    /// Rules in those chains plus the jumps into them.
    rules: usize,
}

fn istio_rules(save: &str) -> IstioRules {
    let mut table = "";
    let mut chains = Vec::new();
    let mut rules = 0;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or("");
            if name.starts_with("ISTIO") {
                chains.push(format!("{table}/{name}"));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            if rule.starts_with("ISTIO") || rule.contains("-j ISTIO") {
                rules += 1;
            }
        }
    }
    IstioRules { chains, rules }
}
