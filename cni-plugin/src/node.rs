//! What the node agent programs on the node, below Kubernetes: entering pod network namespaces,
//! the in-pod redirection rules that steer a pod's traffic into the tunnel, the host-side SNAT
//! that lets kubelet probes through, and finding the netns of pods that were already running
//! when the agent started.
//!
//! Pod network namespaces are [`NetnsHandle`](nodetunnel_base::netns::NetnsHandle)s from
//! `nodetunnel-base`, the same handle the tunnel uses: code (and child processes) run inside one
//! with [`NetnsHandle::run`](nodetunnel_base::netns::NetnsHandle::run).
//!
//! Everything here is blocking (std threads, child processes); the agent calls it from
//! `tokio::task::spawn_blocking`.
//!
//! - [`procscan`]: the netns of a running pod, found under `/proc` by cgroup pod uid + pod IP.
//! - [`inpod_rules`]: the iptables rules, ip rule and route inside a pod (apply / remove / check).
//! - [`fail_closed`]: the netlink-only block (`ip rule … prohibit`) that keeps a pod's traffic in
//!   while its rules are broken and cannot be written again.
//! - [`listener_handover`]: `tcp_migrate_req=1` in a pod, so a tunnel upgrade resets nothing.
//! - [`host_rules`]: the probe SNAT in the agent's (the host's) netns: ipset + `ISTIO_POSTRT`.
//! - [`tools`]: the external binaries (`iptables-restore`, `iptables-save`, their `ip6tables`
//!   twins, `ipset`) and their errors.
//! - [`family`]: what differs between the IPv4 and the IPv6 rule sets (binaries, loopback, probe
//!   SNAT source). IPv6 is written when `AMBIENT_IPV6` is on (the default, as Istio's chart).

#![deny(unsafe_code)]

pub mod fail_closed;
pub mod family;
pub mod host_rules;
pub mod inpod_rules;
pub mod listener_handover;
pub mod procscan;
pub mod tools;

mod cgroup;
mod ipt;
mod routing;

pub use ipt::SaveParseError;
pub use routing::RoutingError;
