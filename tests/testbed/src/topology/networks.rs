//! Two networks joined only through a gateway node (multi-network meshes, double HBONE).
//!
//! ```text
//!  n1 (network A)                 gw                       n2 (network B)
//!  10.77.1.1, client .1.10  ──  10.77.3.1, eastwest .3.10  ──  10.77.2.1, server .2.10
//!      eth0 ─────────────────── eth0          eth1 ──────────────────── eth0
//! ```
//!
//! n1 routes only 10.77.3.0/24 (and the service VIPs) onto its link; n2 only 10.77.3.0/24.
//! The gateway node has a route to each side but does not forward (`ip_forward=0`): a packet
//! from one network can reach the other only as bytes a process in `gw` relays.

use std::net::Ipv4Addr;

use super::{addr, Capture, Node, NodeSpec, Topology};
use crate::error::Result;
use crate::netns::{self, Netns};

/// The gateway node's addresses.
pub mod net {
    use std::net::Ipv4Addr;

    /// The gateway node (and where the control plane listens, reachable from both networks).
    pub const GATEWAY_NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);
    /// The east-west gateway workload.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 10);
    /// The gateway node's subnet, the only one both networks route to.
    pub const GATEWAY_SUBNET: &str = "10.77.3.0/24";
}

impl Topology {
    /// The two-network topology above, with `capture` on n1 and n2 (none on `gw`): `n1` has
    /// mesh pod `client` 10.77.1.10, `n2` mesh pod `server` 10.77.2.10, `gw` mesh pod
    /// `eastwest` 10.77.3.10.
    pub fn two_networks(name: &str, capture: Capture) -> Result<Topology> {
        netns::sweep_stale();
        let prefix = netns::unique_prefix();
        let dir = netns::topology_dir(&prefix, name)?;
        let mut topo = Topology {
            name: name.into(),
            prefix,
            nodes: Vec::new(),
            dir,
        };
        let specs = [
            (
                "n1",
                NodeSpec::new(addr::NODE1)
                    .pod("client", addr::CLIENT)
                    .capture(capture),
            ),
            (
                "gw",
                NodeSpec::new(net::GATEWAY_NODE)
                    .pod("eastwest", net::GATEWAY)
                    .capture(Capture::NONE),
            ),
            (
                "n2",
                NodeSpec::new(addr::NODE2)
                    .pod("server", addr::SERVER)
                    .capture(capture),
            ),
        ];
        for (node, spec) in specs {
            let ns = Netns::create(&format!("{}-{node}", topo.prefix))?;
            topo.nodes.push(Node {
                name: node.into(),
                ns,
                spec,
            });
        }
        let veth = |a: &str, a_dev: &str, b: &str, b_dev: &str| {
            let (a, b) = (topo.node(a).ns.name(), topo.node(b).ns.name());
            crate::cmd::run(
                "ip",
                &[
                    "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev,
                    "netns", b,
                ],
            )
        };
        veth("n1", "eth0", "gw", "eth0")?;
        veth("n2", "eth0", "gw", "eth1")?;
        for side in ["n1", "n2"] {
            let node = topo.node(side);
            configure_side(node)?;
        }
        let gw = topo.node("gw");
        for ip in [net::GATEWAY_NODE, net::GATEWAY] {
            gw.ns
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        }
        let src = net::GATEWAY_NODE.to_string();
        for (dev, subnet) in [("eth0", "10.77.1.0/24"), ("eth1", "10.77.2.0/24")] {
            gw.ns.ip(&["link", "set", dev, "up"])?;
            gw.ns
                .ip(&["route", "add", subnet, "dev", dev, "src", &src])?;
        }
        gw.ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
        for node in &topo.nodes {
            node.set_capture(node.spec.capture)?;
        }
        Ok(topo)
    }
}

/// A network side: its addresses on its /24, a route to the gateway subnet and (n1, the
/// client side) to the service VIPs, nothing else.
fn configure_side(node: &Node) -> Result<()> {
    let cidr = |ip: Ipv4Addr| format!("{ip}/24");
    node.ns
        .ip(&["addr", "add", &cidr(node.spec.ip), "dev", "eth0"])?;
    for pod in &node.spec.pods {
        node.ns.ip(&["addr", "add", &cidr(pod.ip), "dev", "eth0"])?;
    }
    node.ns.ip(&["link", "set", "eth0", "up"])?;
    node.ns
        .ip(&["route", "add", net::GATEWAY_SUBNET, "dev", "eth0"])?;
    node.ns
        .ip(&["route", "add", addr::SERVICE_CIDR, "dev", "eth0"])?;
    Ok(())
}
