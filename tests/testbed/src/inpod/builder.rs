//! [`PodTopologyBuilder`]: describing a [`PodTopology`] and bringing it up.

use std::net::Ipv4Addr;

use super::{quiet_sysctls, InpodRules, PodNode, PodTopology};
use crate::error::{Error, Result};
use crate::netns::{self, Netns};

/// Describes a [`PodTopology`]: nodes, at most one node-to-node link, pods.
pub struct PodTopologyBuilder {
    name: String,
    nodes: Vec<(String, Ipv4Addr)>,
    link: Option<(String, String)>,
    pods: Vec<(String, String, Ipv4Addr, bool)>,
    rules: InpodRules,
    dual_stack: bool,
}

impl PodTopologyBuilder {
    pub(super) fn new(name: &str) -> Self {
        PodTopologyBuilder {
            name: name.into(),
            nodes: Vec::new(),
            link: None,
            pods: Vec::new(),
            rules: InpodRules::Apply,
            dual_stack: false,
        }
    }

    /// Gives every node and pod an IPv6 address too ([`super::v6_of`] of its IPv4 one), with
    /// IPv6 routes alongside the IPv4 ones and forwarding on in the nodes.
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    /// Adds a node with address `ip` (its pods must be in `ip`'s /24).
    pub fn node(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.nodes.push((name.into(), ip));
        self
    }

    /// Joins two nodes with a veth pair (`eth0` on both sides).
    pub fn link(mut self, a: &str, b: &str) -> Self {
        self.link = Some((a.into(), b.into()));
        self
    }

    /// Adds a mesh pod on `node`.
    pub fn pod(mut self, node: &str, name: &str, ip: Ipv4Addr) -> Self {
        self.pods.push((node.into(), name.into(), ip, true));
        self
    }

    /// Adds a pod outside the mesh (never gets rules).
    pub fn non_mesh(mut self, node: &str, name: &str, ip: Ipv4Addr) -> Self {
        self.pods.push((node.into(), name.into(), ip, false));
        self
    }

    /// Whether mesh pods get the in-pod rules (default: [`InpodRules::Apply`]).
    pub fn rules(mut self, rules: InpodRules) -> Self {
        self.rules = rules;
        self
    }

    /// Creates namespaces, links, addresses, routes and rules. Sweeps leftovers of killed runs
    /// first. A partially built topology is removed on error.
    pub fn build(self) -> Result<PodTopology> {
        netns::sweep_stale();
        let mut names: Vec<&str> = self.nodes.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != self.nodes.len() {
            return Err(Error::Invalid("duplicate node name".into()));
        }
        if let Some((a, b)) = &self.link {
            if a == b || !names.contains(&a.as_str()) || !names.contains(&b.as_str()) {
                return Err(Error::Invalid(format!("bad link {a:?} ↔ {b:?}")));
            }
        }
        let prefix = netns::unique_prefix();
        let dir = netns::topology_dir(&prefix, &self.name)?;
        let mut topo = PodTopology {
            name: self.name,
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            rules: self.rules,
            dual_stack: self.dual_stack,
            next_veth: 0,
            dir,
        };
        for (name, ip) in &self.nodes {
            let ns = Netns::create(&format!("{}-{name}", topo.prefix))?;
            let mut extra = vec!["net.ipv4.ip_forward=1"];
            if self.dual_stack {
                extra.push("net.ipv6.conf.all.forwarding=1");
            }
            quiet_sysctls(&ns, &extra)?;
            topo.nodes.push(PodNode {
                name: name.clone(),
                ip: *ip,
                ns,
            });
        }
        if let Some((a, b)) = &self.link {
            topo.link_nodes(a, b)?;
        }
        for node in &topo.nodes {
            let linked = self
                .link
                .as_ref()
                .is_some_and(|(a, b)| *a == node.name || *b == node.name);
            if !linked {
                // No eth0: the node address still has to be local so it answers its pods' ARP.
                node.ns
                    .ip(&["addr", "add", &format!("{}/32", node.ip), "dev", "lo"])?;
                if self.dual_stack {
                    let ip6 = format!("{}/128", super::v6_of(node.ip));
                    node.ns.ip(&["-6", "addr", "add", &ip6, "dev", "lo"])?;
                }
            }
        }
        for (node, name, ip, mesh) in self.pods {
            topo.add_pod(&node, &name, ip, mesh)?;
        }
        Ok(topo)
    }
}
