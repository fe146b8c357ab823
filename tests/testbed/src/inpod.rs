//! Topologies for the tunnel's shared (in-pod) mode: every pod is its own network namespace,
//! joined to its node's namespace by a veth pair, and mesh pods carry the CNI agent's in-pod
//! redirection rules ([`rules`]). One tunnel runs per node namespace and is handed the pods' namespaces
//! (their [`Netns::path`]) by a ZDS agent.
//!
//! Addressing (Calico-like, no bridge, no shared L2 between pods):
//! - node `eth0` (veth to the other node) holds `<node ip>/32`; routes `<peer ip> dev eth0` and
//!   `<peer ip>/24 via <peer ip>` (the peer node's pod range); `ip_forward=1`;
//! - pod `eth0` holds `<pod ip>/32`; routes `<node ip> dev eth0 scope link`, `default via
//!   <node ip>`; the node answers ARP for its own address on every interface;
//! - node side of a pod's veth: `p<n>` with `<pod ip>/32 dev p<n>`;
//! - `rp_filter=0` in every namespace (transparent and forwarded traffic must not be dropped).
//!
//! Dual stack ([`PodTopologyBuilder::dual_stack`]): every address also has an IPv6 twin
//! ([`v6_of`]: `10.77.<c>.<d>` → `fd77::<c>:0:0:<d>`, a ULA), set up the same way with `/128`s,
//! `nodad` and `accept_dad=0` (usable at once); the node also holds its IPv6 address on each
//! pod veth so it answers its pods' neighbour solicitations, and the peer node's pods are
//! routed as `fd77::<c>:0:0:0/64 via <peer node v6>`.

mod builder;
pub mod mesh;
pub mod rules;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::control::{ControlPlane, ControlPlaneSpec};
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::topology::addr;
use crate::tunnel::{self, Tunnel, TunnelLaunch};

pub use builder::PodTopologyBuilder;
pub use mesh::{InpodMesh, MeshBins, ZdsAgentProcess};
pub use rules::{
    apply_inpod_rules, apply_inpod_rules_with_dns_capture, inpod_rules_v4, remove_inpod_rules,
};

/// Whether mesh pods get the in-pod rules when they are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InpodRules {
    /// Mesh pods get the CNI agent's in-pod rules and fwmark rule/route ([`apply_inpod_rules`]:
    /// the agent's own code, called in-process).
    Apply,
    /// No pod gets rules: plain routing only.
    Skip,
}

/// The IPv6 twin of a testbed IPv4 address: `10.77.<c>.<d>` → `fd77::<c>:0:0:<d>`.
pub fn v6_of(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, c, d] = ip.octets();
    Ipv6Addr::new(0xfd77, 0, 0, 0, c.into(), 0, 0, d.into())
}

/// The /64 holding the IPv6 twins of `ip`'s /24.
fn v6_subnet(ip: Ipv4Addr) -> String {
    let [_, _, c, _] = ip.octets();
    format!("{}/64", Ipv6Addr::new(0xfd77, 0, 0, 0, c.into(), 0, 0, 0))
}

/// A pod: its own namespace, one address, a veth to its node.
pub struct PodNs {
    name: String,
    node: String,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    mesh: bool,
    veth: String,
    ns: Netns,
}

impl PodNs {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node this pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's IPv6 address in a dual-stack topology.
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.ip6
    }

    /// Whether the pod is in the mesh (mesh pods get the in-pod rules under
    /// [`InpodRules::Apply`]).
    pub fn mesh(&self) -> bool {
        self.mesh
    }

    /// The pod's namespace; `ns().path()` is what the ZDS agent hands to the tunnel.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The node-side end of the pod's veth pair (`p<n>`).
    pub fn veth(&self) -> &str {
        &self.veth
    }
}

/// A node namespace (where the shared-mode tunnel runs).
pub struct PodNode {
    name: String,
    ip: Ipv4Addr,
    ns: Netns,
}

impl PodNode {
    /// The node's name (`n1`), as the tunnel's `NODE_NAME` and the workloads' `node`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

/// A built in-pod topology. Dropping it deletes every pod and node namespace (killing processes
/// still inside them, except tunnels, which their own handle stops) and the temp dir.
pub struct PodTopology {
    name: String,
    prefix: String,
    nodes: Vec<PodNode>,
    pods: Vec<PodNs>,
    rules: InpodRules,
    dual_stack: bool,
    next_veth: usize,
    dir: TempDir,
}

impl PodTopology {
    /// Starts describing a topology; `name` only labels temp dirs and messages.
    pub fn builder(name: &str) -> PodTopologyBuilder {
        PodTopologyBuilder::new(name)
    }

    /// The standard two-node in-pod topology (same addresses as [`crate::Topology::two_node`]):
    /// - `n1` 10.77.1.1: mesh pods `client` 10.77.1.10 and `client2` 10.77.1.11;
    /// - `n2` 10.77.2.1: mesh pod `server` 10.77.2.10, non-mesh pod `plain` 10.77.2.20;
    /// - n1 ↔ n2 over one veth; each pod its own namespace; `rules` for the mesh pods.
    pub fn two_node(name: &str, rules: InpodRules) -> Result<PodTopology> {
        PodTopology::builder(name)
            .node("n1", addr::NODE1)
            .node("n2", addr::NODE2)
            .link("n1", "n2")
            .pod("n1", "client", addr::CLIENT)
            .pod("n1", "client2", addr::CLIENT2)
            .pod("n2", "server", addr::SERVER)
            .non_mesh("n2", "plain", addr::NON_MESH)
            .rules(rules)
            .build()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unique `ntt<pid>-<n>` prefix of this topology's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether mesh pods get rules when added.
    pub fn rules(&self) -> InpodRules {
        self.rules
    }

    /// The node called `name`; panics if there is none (a typo in a test).
    pub fn node(&self, name: &str) -> &PodNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("topology {} has no node {name:?}", self.name))
    }

    /// Shorthand for `node(name).ns()`.
    pub fn node_ns(&self, node: &str) -> &Netns {
        self.node(node).ns()
    }

    pub fn nodes(&self) -> &[PodNode] {
        &self.nodes
    }

    /// The pod called `name`; panics if there is none.
    pub fn pod(&self, name: &str) -> &PodNs {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("topology {} has no pod {name:?}", self.name))
    }

    /// Shorthand for `pod(name).ns()`.
    pub fn ns(&self, pod: &str) -> &Netns {
        self.pod(pod).ns()
    }

    /// Every pod, in creation order.
    pub fn pods(&self) -> &[PodNs] {
        &self.pods
    }

    /// The pods on `node`, in creation order.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodNs> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// The topology's temp dir (configs, CA, logs, ZDS sockets live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `dir()/<file>`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts `nodetunnel-control` (`bin`) in node `node`'s namespace on the node's IP, serving
    /// `mesh` with the CA in `ca_dir`, with a token bound to each node of the topology, and
    /// waits until it is ready.
    pub fn start_control_plane(
        &self,
        node: &str,
        bin: &Path,
        mesh: &Path,
        ca_dir: &Path,
        args: &[&str],
    ) -> Result<ControlPlane> {
        let spec = ControlPlaneSpec::new(mesh, ca_dir, self.node(node).ip(), args)
            .for_nodes(self.nodes.iter().map(PodNode::name));
        ControlPlane::start(self.node_ns(node), bin, self.dir(), spec)
    }

    /// Creates pod `name` on `node` with address `ip` (in the node's /24): its namespace, veth,
    /// addresses and routes, and the in-pod rules if `mesh` and [`rules`](Self::rules) is
    /// [`InpodRules::Apply`]. Traffic to and from it works when this returns.
    pub fn add_pod(&mut self, node: &str, name: &str, ip: Ipv4Addr, mesh: bool) -> Result<&PodNs> {
        if self.pods.iter().any(|p| p.name == name || p.ip == ip) {
            return Err(Error::Invalid(format!(
                "pod {name:?} or address {ip} exists"
            )));
        }
        let Some(node_idx) = self.nodes.iter().position(|n| n.name == node) else {
            return Err(Error::Invalid(format!("no node {node:?} for pod {name:?}")));
        };
        let node_ip = self.nodes[node_idx].ip;
        if node_ip.octets()[..3] != ip.octets()[..3] || ip == node_ip {
            return Err(Error::Invalid(format!(
                "pod {name:?} address {ip} is not in node {node:?}'s range {}/24",
                subnet24(node_ip)
            )));
        }
        let ns = Netns::create(&format!("{}-{node}-{name}", self.prefix))?;
        quiet_sysctls(&ns, &[])?;
        if self.dual_stack {
            ns.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        let veth = format!("p{}", self.next_veth);
        self.next_veth += 1;
        let node_ns = &self.nodes[node_idx].ns;
        crate::cmd::run(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "netns",
                node_ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        )?;
        let (ip_s, node_ip_s) = (ip.to_string(), node_ip.to_string());
        ns.ip(&["addr", "add", &format!("{ip_s}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", &node_ip_s, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", &node_ip_s, "dev", "eth0"])?;
        node_ns.ip(&["link", "set", &veth, "up"])?;
        node_ns.ip(&["route", "add", &format!("{ip_s}/32"), "dev", &veth])?;
        let ip6 = self.dual_stack.then(|| v6_of(ip));
        if let Some(ip6) = ip6 {
            let node6 = v6_of(node_ip).to_string();
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip6}/128"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ns.ip(&["-6", "route", "add", &node6, "dev", "eth0"])?;
            ns.ip(&[
                "-6", "route", "add", "default", "via", &node6, "dev", "eth0",
            ])?;
            node_ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{node6}/128"),
                "dev",
                &veth,
                "nodad",
            ])?;
            node_ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &veth])?;
        }
        if mesh && self.rules == InpodRules::Apply {
            apply_inpod_rules(&ns)?;
        }
        self.pods.push(PodNs {
            name: name.into(),
            node: node.into(),
            ip,
            ip6,
            mesh,
            veth,
            ns,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Deletes pod `name`: its veth pair (and so its route on the node), then its namespace —
    /// at once unless someone else still holds a clone of its [`Netns`] (then when they drop
    /// it). A tunnel holding the namespace's fd keeps the namespace itself alive, as in a real
    /// node.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let Some(idx) = self.pods.iter().position(|p| p.name == name) else {
            return Err(Error::Invalid(format!("no pod {name:?} to remove")));
        };
        let pod = self.pods.remove(idx);
        let node_ns = &self.node(&pod.node).ns;
        node_ns.ip(&["link", "del", &pod.veth])?;
        drop(pod);
        Ok(())
    }

    /// Starts `bin` in node `node`'s namespace with `env` (see [`crate::shared_tunnel_env`]),
    /// logging to `dir()/<node>-tunnel-<n>.log`, WITHOUT waiting for readiness: a shared-mode
    /// tunnel is only ready once its ZDS agent sent a snapshot. Use [`Tunnel::wait_ready`].
    pub fn spawn_tunnel(&self, node: &str, bin: &Path, env: &[(&str, &str)]) -> Result<Tunnel> {
        let log = tunnel::fresh_log_path(self.dir(), node);
        Tunnel::spawn(self.node_ns(node), bin, env, &log)
    }

    /// [`spawn_tunnel`](Self::spawn_tunnel) with the arguments and environment of `launch`.
    pub fn spawn_tunnel_launch(
        &self,
        node: &str,
        bin: &Path,
        launch: &TunnelLaunch,
    ) -> Result<Tunnel> {
        let log = tunnel::fresh_log_path(self.dir(), node);
        Tunnel::spawn_launch(self.node_ns(node), bin, launch, &log)
    }

    fn link_nodes(&self, a: &str, b: &str) -> Result<()> {
        let (a, b) = (self.node(a), self.node(b));
        crate::cmd::run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                a.ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                b.ns.name(),
            ],
        )?;
        for (me, peer) in [(a, b), (b, a)] {
            let peer_ip = peer.ip.to_string();
            me.ns
                .ip(&["addr", "add", &format!("{}/32", me.ip), "dev", "eth0"])?;
            me.ns.ip(&["link", "set", "eth0", "up"])?;
            me.ns.ip(&["route", "add", &peer_ip, "dev", "eth0"])?;
            me.ns.ip(&[
                "route",
                "add",
                &format!("{}/24", subnet24(peer.ip)),
                "via",
                &peer_ip,
            ])?;
            if self.dual_stack {
                let (me6, peer6) = (v6_of(me.ip).to_string(), v6_of(peer.ip).to_string());
                me.ns
                    .exec("sysctl", &["-qw", "net.ipv6.conf.eth0.accept_dad=0"])?;
                me.ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{me6}/128"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                me.ns.ip(&["-6", "route", "add", &peer6, "dev", "eth0"])?;
                me.ns
                    .ip(&["-6", "route", "add", &v6_subnet(peer.ip), "via", &peer6])?;
            }
        }
        Ok(())
    }
}

impl Drop for PodTopology {
    fn drop(&mut self) {
        // Pods first (their veths die with them), then nodes; the TempDir field removes the
        // directory itself, only the signal-path record goes here.
        self.pods.clear();
        self.nodes.clear();
        netns::unregister_dir(self.dir.path());
    }
}

fn subnet24(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = ip.octets();
    Ipv4Addr::new(a, b, c, 0)
}

/// `rp_filter=0` on `all`, `default` and `lo` (so interfaces created later inherit 0), plus
/// `extra`, via `sysctl -w` inside `ns`.
fn quiet_sysctls(ns: &Netns, extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.lo.rp_filter=0",
    ];
    args.extend_from_slice(extra);
    ns.exec("sysctl", &args).map(drop)
}
