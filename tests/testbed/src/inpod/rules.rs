//! The in-pod redirection rules (docs/contracts.md, "In-pod redirection rules"), exactly as the
//! CNI node agent installs them: this module calls the agent's own code
//! (`nodetunnel_cni::node::inpod_rules`) in-process, so the tunnel's tests run against the rule
//! set a cluster node gets, and the rules are written down once, in `cni-plugin/`.
//!
//! The testbed uses the agent's default options (no DNS capture, inbound captured):
//! - `nat`: outbound TCP → :15001, inbound TCP (except :15008) → :15006, the tunnel's own
//!   sockets (mark 0x539) and kubelet probes (from 169.254.7.127) pass.
//! - `mangle` + policy routing: a connection the tunnel opened with mark 0x539 gets connmark
//!   0x111; its replies get mark 0x111 back and are routed by table 100 (`local 0.0.0.0/0 dev
//!   lo`) to the tunnel's IP_TRANSPARENT socket instead of out of `eth0` to the real client.

use nodetunnel_base::netns::NetnsHandle;
use nodetunnel_cni::node::inpod_rules::{self, RuleOptions, RulesError};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// The mark the tunnel puts on every socket it opens inside a pod (`SO_MARK`): the tunnel's
/// half of the contract, stated here so tests can play the tunnel against the agent's rules.
pub const TUNNEL_SOCKET_MARK: u32 = 0x539;
/// Source address of kubelet probes after the node's SNAT; the rules never redirect it.
pub const PROBE_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);

/// The options the testbed installs the rules with: the agent's defaults (IPv6 on, as
/// `AMBIENT_IPV6` defaults to, so dual-stack pods are captured in both families).
const OPTIONS: RuleOptions = RuleOptions {
    dns_capture: false,
    bypass_inbound: false,
    ipv6: true,
};

/// The `iptables-restore --noflush` input the agent renders for a pod with no rules yet (the
/// rule set [`apply_inpod_rules`] installs), as `iptables-save` spells each rule.
pub fn inpod_rules_v4() -> String {
    inpod_rules::render(&OPTIONS)
}

/// Installs the agent's in-pod rules, its fwmark rule and its table-100 local route in `ns`
/// (`nodetunnel_cni::node::inpod_rules::apply`). Idempotent: applying twice leaves exactly one
/// copy of everything.
pub fn apply_inpod_rules(ns: &Netns) -> Result<()> {
    let pod = open(ns)?;
    inpod_rules::apply(&pod, &OPTIONS).map_err(|source| rules_error(ns, source))
}

/// Installs the rules with DNS capture on (UDP and TCP port 53 → 15053, the `raw` table's
/// conntrack zone for the tunnel's own queries), as the agent does for a pod when
/// `AMBIENT_DNS_CAPTURE` is on; over rules already there, the set is replaced.
pub fn apply_inpod_rules_with_dns_capture(ns: &Netns) -> Result<()> {
    let pod = open(ns)?;
    let options = RuleOptions {
        dns_capture: true,
        ..OPTIONS
    };
    inpod_rules::apply(&pod, &options).map_err(|source| rules_error(ns, source))
}

/// Removes everything [`apply_inpod_rules`] installed (`inpod_rules::remove`; missing pieces
/// are not an error).
pub fn remove_inpod_rules(ns: &Netns) -> Result<()> {
    let pod = open(ns)?;
    inpod_rules::remove(&pod).map_err(|source| rules_error(ns, source))
}

fn open(ns: &Netns) -> Result<NetnsHandle> {
    NetnsHandle::open(&ns.path()).map_err(|source| rules_error(ns, source.into()))
}

fn rules_error(ns: &Netns, source: RulesError) -> Error {
    Error::InpodRules {
        netns: ns.name().to_string(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests;
