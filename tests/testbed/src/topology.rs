//! Topologies of node namespaces joined by point-to-point L2 links, with pods as extra
//! addresses on a node and ztunnel-style capture rules (dedicated mode: the tunnel runs in the
//! node namespace, next to the pods it serves).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::control::{ControlPlane, ControlPlaneSpec};
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::tunnel::Tunnel;

mod networks;
pub use networks::net;

/// The addresses of the standard two-node topology (all inside 10.77.0.0/16, plus a service
/// VIP routed onto the link). Nothing else is ever a target.
pub mod addr {
    use std::net::Ipv4Addr;

    pub const NODE1: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
    pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 11);
    pub const NODE2: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 10);
    pub const NON_MESH: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 20);
    pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    /// Prefix length of every pod and node address (one L2 segment, so ARP just works).
    pub const PREFIX_LEN: u8 = 16;
    /// Routed onto `eth0` so a client can `connect()` to a VIP and be captured.
    pub const SERVICE_CIDR: &str = "10.96.0.0/16";
}

/// The tunnel's ports (ztunnel's).
pub mod port {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    pub const HBONE: u16 = 15008;
    pub const METRICS: u16 = 15020;
    pub const READINESS: u16 = 15021;
    pub const ADMIN: u16 = 15000;
}

/// The mark the tunnel puts on its own sockets so capture lets them pass.
pub const TUNNEL_MARK: &str = "0x539/0xfff";

/// Which traffic a node's iptables rules redirect into its tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// `nat OUTPUT`: every TCP connection to a non-loopback address → :15001.
    pub outbound: bool,
    /// `nat PREROUTING`: TCP to a mesh pod address, except :15008 → :15006.
    pub inbound: bool,
}

impl Capture {
    pub const ALL: Capture = Capture {
        outbound: true,
        inbound: true,
    };
    pub const NONE: Capture = Capture {
        outbound: false,
        inbound: false,
    };
}

/// One address on a node: a pod (mesh or not) or the node itself.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Mesh pods get inbound capture; non-mesh pods are plain servers/clients.
    pub mesh: bool,
}

/// What a node looks like: its own address, its pods, its capture rules.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub ip: Ipv4Addr,
    pub pods: Vec<Pod>,
    pub capture: Capture,
}

impl NodeSpec {
    /// A node with address `ip`, no pods, and full capture.
    pub fn new(ip: Ipv4Addr) -> Self {
        NodeSpec {
            ip,
            pods: Vec::new(),
            capture: Capture::ALL,
        }
    }

    /// Adds a mesh pod.
    pub fn pod(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.pods.push(Pod {
            name: name.into(),
            ip,
            mesh: true,
        });
        self
    }

    /// Adds a pod outside the mesh (no inbound capture for it).
    pub fn non_mesh(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.pods.push(Pod {
            name: name.into(),
            ip,
            mesh: false,
        });
        self
    }

    /// Sets the capture rules installed at build time.
    pub fn capture(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }
}

/// Describes a topology; [`build`](Self::build) creates it.
pub struct TopologyBuilder {
    name: String,
    nodes: Vec<(String, NodeSpec)>,
    links: Vec<(String, String)>,
}

impl TopologyBuilder {
    /// Adds a node namespace.
    pub fn node(mut self, name: &str, spec: NodeSpec) -> Self {
        self.nodes.push((name.into(), spec));
        self
    }

    /// Joins two nodes with a veth pair (`eth0` on both sides). A node has at most one link.
    pub fn link(mut self, a: &str, b: &str) -> Self {
        self.links.push((a.into(), b.into()));
        self
    }

    /// Creates namespaces, links, addresses, routes and capture rules. Sweeps leftovers of
    /// killed runs first. Partially built topologies are removed on error.
    pub fn build(self) -> Result<Topology> {
        netns::sweep_stale();
        self.validate()?;
        let prefix = netns::unique_prefix();
        let dir = netns::topology_dir(&prefix, &self.name)?;
        let mut topo = Topology {
            name: self.name,
            prefix,
            nodes: Vec::new(),
            dir,
        };
        for (name, spec) in self.nodes {
            let ns = Netns::create(&format!("{}-{name}", topo.prefix))?;
            topo.nodes.push(Node { name, ns, spec });
        }
        for (a, b) in &self.links {
            let (a, b) = (topo.node(a), topo.node(b));
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
        }
        let linked: Vec<&String> = self.links.iter().flat_map(|(a, b)| [a, b]).collect();
        for node in &topo.nodes {
            if linked.contains(&&node.name) {
                node.configure_link()?;
            }
            node.set_capture(node.spec.capture)?;
        }
        Ok(topo)
    }

    fn validate(&self) -> Result<()> {
        let mut names: Vec<&str> = self.nodes.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != self.nodes.len() {
            return Err(Error::Invalid("duplicate node name".into()));
        }
        let mut ends: Vec<&str> = Vec::new();
        for (a, b) in &self.links {
            for end in [a, b] {
                if !names.contains(&end.as_str()) {
                    return Err(Error::Invalid(format!("link to unknown node {end:?}")));
                }
                if ends.contains(&end.as_str()) {
                    return Err(Error::Invalid(format!(
                        "node {end:?} has more than one link"
                    )));
                }
                ends.push(end);
            }
        }
        Ok(())
    }
}

/// A node: a namespace holding the node address, its pods' addresses and (maybe) a tunnel.
pub struct Node {
    name: String,
    ns: Netns,
    spec: NodeSpec,
}

impl Node {
    /// The node's name (`n1`), as the tunnel's `NODE_NAME` and the workloads' `node`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.spec.ip
    }

    pub fn pods(&self) -> &[Pod] {
        &self.spec.pods
    }

    pub fn capture(&self) -> Capture {
        self.spec.capture
    }

    fn configure_link(&self) -> Result<()> {
        let cidr = |ip: Ipv4Addr| format!("{ip}/{}", addr::PREFIX_LEN);
        self.ns
            .ip(&["addr", "add", &cidr(self.spec.ip), "dev", "eth0"])?;
        for pod in &self.spec.pods {
            self.ns.ip(&["addr", "add", &cidr(pod.ip), "dev", "eth0"])?;
        }
        self.ns.ip(&["link", "set", "eth0", "up"])?;
        self.ns
            .ip(&["route", "add", addr::SERVICE_CIDR, "dev", "eth0"])?;
        Ok(())
    }

    /// Replaces this node's capture rules (flushes the `nat` table, then installs `capture`).
    pub fn set_capture(&self, capture: Capture) -> Result<()> {
        self.ns.exec("iptables", &["-t", "nat", "-F"])?;
        if capture.outbound {
            self.ns.exec(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    // The tunnel's own control-plane connections (xDS + CA on 15012) leave
                    // uncaptured, as a ztunnel's connections to istiod do.
                    "!",
                    "--dport",
                    "15012",
                    "!",
                    "-d",
                    "127.0.0.0/8",
                    "-m",
                    "mark",
                    "!",
                    "--mark",
                    TUNNEL_MARK,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "15001",
                ],
            )?;
        }
        if capture.inbound {
            for pod in self.spec.pods.iter().filter(|p| p.mesh) {
                self.ns.exec(
                    "iptables",
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        "15008",
                        "-d",
                        &pod.ip.to_string(),
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        "15006",
                    ],
                )?;
            }
        }
        Ok(())
    }
}

/// A built topology. Dropping it deletes its namespaces (killing anything still inside them)
/// and its temp dir (configs, CA, logs).
pub struct Topology {
    name: String,
    prefix: String,
    nodes: Vec<Node>,
    dir: TempDir,
}

impl Topology {
    /// Starts describing a topology; `name` only labels temp dirs and messages.
    pub fn builder(name: &str) -> TopologyBuilder {
        TopologyBuilder {
            name: name.into(),
            nodes: Vec::new(),
            links: Vec::new(),
        }
    }

    /// The standard two-node topology, both nodes with the given capture:
    /// - `n1` 10.77.1.1: mesh pods `client` 10.77.1.10 and `client2` 10.77.1.11;
    /// - `n2` 10.77.2.1: mesh pod `server` 10.77.2.10, non-mesh pod `plain` 10.77.2.20;
    /// - one veth link n1 ↔ n2; 10.96.0.0/16 (service VIPs) routed onto it.
    pub fn two_node(name: &str, capture: Capture) -> Result<Topology> {
        Topology::builder(name)
            .node(
                "n1",
                NodeSpec::new(addr::NODE1)
                    .pod("client", addr::CLIENT)
                    .pod("client2", addr::CLIENT2)
                    .capture(capture),
            )
            .node(
                "n2",
                NodeSpec::new(addr::NODE2)
                    .pod("server", addr::SERVER)
                    .non_mesh("plain", addr::NON_MESH)
                    .capture(capture),
            )
            .link("n1", "n2")
            .build()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unique `ntt<pid>-<n>` prefix of this topology's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node called `name`; panics if there is none (a typo in a test).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("topology {} has no node {name:?}", self.name))
    }

    /// Shorthand for `node(name).ns()`.
    pub fn ns(&self, node: &str) -> &Netns {
        self.node(node).ns()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The topology's temp dir (configs, CA, logs live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `dir()/<file>`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts `bin` in node `node`'s namespace with `env`, logging to `dir()/<node>-tunnel-<n>.log`,
    /// and waits until it is ready (see [`Tunnel::start`]).
    pub fn start_tunnel(&self, node: &str, bin: &Path, env: &[(&str, &str)]) -> Result<Tunnel> {
        let log = crate::tunnel::fresh_log_path(self.dir(), node);
        Tunnel::start(self.ns(node), bin, env, &log)
    }

    /// Starts a dedicated-mode tunnel on `node` whose mesh and certificates come from `cp`
    /// ([`crate::tunnel_env`] with `extra` set on top), and waits until it is ready.
    pub fn start_control_tunnel(
        &self,
        node: &str,
        bin: &Path,
        cp: &ControlPlane,
        extra: &[(&str, &str)],
    ) -> Result<Tunnel> {
        let mut env = crate::tunnel_env(node, crate::Mesh::Control(cp), crate::Ca::Control(cp));
        for (key, value) in extra {
            crate::set_env(&mut env, key, value);
        }
        self.start_tunnel(node, bin, &crate::env_refs(&env))
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
            .for_nodes(self.nodes.iter().map(Node::name));
        ControlPlane::start(self.ns(node), bin, self.dir(), spec)
    }

    /// The usual mesh control plane on `node`: `cfg` written to `<dir>/mesh.yaml`, a new root
    /// CA in `<dir>/ca` (made by `tunnel_bin generate-ca`) and `nodetunnel-control` serving
    /// both. Returns it and the mesh file's path, for tests that rewrite the mesh later.
    pub fn start_mesh_control(
        &self,
        node: &str,
        tunnel_bin: &Path,
        cfg: &crate::MeshConfig,
    ) -> Result<(ControlPlane, PathBuf)> {
        let mesh = self.path("mesh.yaml");
        cfg.write(&mesh)?;
        let ca = self.path("ca");
        std::fs::create_dir_all(&ca)
            .map_err(|e| Error::io(format!("creating {}", ca.display()), e))?;
        crate::generate_ca(tunnel_bin, &ca)?;
        let control = crate::sibling_binary("nodetunnel-control")?;
        let cp = self.start_control_plane(node, &control, &mesh, &ca, &[])?;
        Ok((cp, mesh))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The TempDir field removes the directory itself; only the signal-path record goes.
        netns::unregister_dir(self.dir.path());
    }
}
