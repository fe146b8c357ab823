//! What a CNI ADD event must prove before its pod is enrolled.
//!
//! The event comes over a local socket from the plugin, and enrolling programs redirection
//! rules inside the netns it names and hands that netns to the tunnel. An event that names the
//! wrong netns would put the rules where they break something (the host's netns) or hand the
//! tunnel a namespace that is not the pod's. So before enrolling, the agent checks that:
//!
//! - the pod is scheduled on this node (a pod of another node has no sandbox here);
//! - the netns is not the host's, nor the agent's own;
//! - every IP the event reports sits on an interface inside that netns (the runtime just
//!   configured them there, so a mismatch means the event and the netns do not belong
//!   together).

use std::net::IpAddr;

use nodetunnel_base::netns::{NetnsHandle, NetnsId};

/// Why an event was refused; each names what did not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddRefused {
    #[error("the pod is scheduled on node {scheduled:?}, not on this node ({this:?})")]
    OtherNode { scheduled: String, this: String },
    #[error("the pod is not scheduled on any node yet")]
    Unscheduled,
    #[error("the netns is the host's network namespace")]
    HostNetns,
    #[error("the netns is the node agent's own network namespace")]
    AgentNetns,
    #[error("no IP was reported for the pod")]
    NoIps,
    #[error("IP {ip} is not on any interface in the netns (it holds {held:?})")]
    IpNotInNetns { ip: IpAddr, held: Vec<IpAddr> },
    #[error("cannot list the addresses in the netns: {0}")]
    Unlisted(String),
}

/// The pod's `spec.nodeName` must be this node.
pub fn on_this_node(scheduled: Option<&str>, this: &str) -> Result<(), AddRefused> {
    match scheduled {
        None | Some("") => Err(AddRefused::Unscheduled),
        Some(node) if node == this => Ok(()),
        Some(node) => Err(AddRefused::OtherNode {
            scheduled: node.to_string(),
            this: this.to_string(),
        }),
    }
}

/// `netns` must be neither `host` nor `own` (either may be unknown), and hold every one of
/// `ips` (at least one).
pub fn netns_is_the_pods(
    netns: NetnsId,
    host: Option<NetnsId>,
    own: Option<NetnsId>,
    ips: &[IpAddr],
    held: Result<Vec<IpAddr>, String>,
) -> Result<(), AddRefused> {
    if Some(netns) == host {
        return Err(AddRefused::HostNetns);
    }
    if Some(netns) == own {
        return Err(AddRefused::AgentNetns);
    }
    if ips.is_empty() {
        return Err(AddRefused::NoIps);
    }
    let held: Vec<IpAddr> = held
        .map_err(AddRefused::Unlisted)?
        .into_iter()
        .map(|ip| ip.to_canonical())
        .collect();
    match ips.iter().find(|ip| !held.contains(&ip.to_canonical())) {
        Some(&ip) => Err(AddRefused::IpNotInNetns { ip, held }),
        None => Ok(()),
    }
}

/// [`netns_is_the_pods`] on an open netns, reading the host's (`<proc>/1/ns/net`) and our own
/// (`/proc/self/ns/net`) namespace ids and the netns's addresses. Blocking (it enters the
/// netns to list addresses).
pub fn check_netns(
    netns: &NetnsHandle,
    proc_root: &std::path::Path,
    ips: &[IpAddr],
) -> Result<(), AddRefused> {
    let host = NetnsId::of_path(&proc_root.join("1/ns/net")).ok();
    let own = NetnsId::of_path(std::path::Path::new("/proc/self/ns/net")).ok();
    let held = netns.addresses().map_err(|e| e.to_string());
    netns_is_the_pods(netns.id(), host, own, ips, held)
}

#[cfg(test)]
mod tests;
