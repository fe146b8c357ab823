//! The two IP families the node rules are written for, and what differs between them: the
//! iptables binaries, the loopback range, the probe SNAT source. Everything else (chains, marks,
//! ports, rule order) is the same for both, as in Istio's `cni/pkg/iptables/iptables.go`
//! (`AppendVersionedRule` picks `127.0.0.1/32` or `::1/128`, `HostProbeSNATAddress` or
//! `HostProbeV6SNATAddress`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::tools::Tools;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// Istio's `HOST_PROBE_SNAT_IP` default.
pub const PROBE_SNAT_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// Istio's `HOST_PROBE_SNAT_IPV6` default (a ULA, collision-resistant by construction).
pub const PROBE_SNAT_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

impl IpFamily {
    /// The loopback range the rules exclude, spelled as `ip(6)tables-save` prints it.
    pub(crate) fn loopback(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.1/32",
            IpFamily::V6 => "::1/128",
        }
    }

    /// The probe SNAT source as a single-address range, as `ip(6)tables-save` prints it.
    pub(crate) fn probe_source(self) -> String {
        match self {
            IpFamily::V4 => format!("{PROBE_SNAT_V4}/32"),
            IpFamily::V6 => format!("{PROBE_SNAT_V6}/128"),
        }
    }

    pub(crate) fn restore(self, tools: &Tools) -> &Path {
        match self {
            IpFamily::V4 => &tools.iptables_restore,
            IpFamily::V6 => &tools.ip6tables_restore,
        }
    }

    pub(crate) fn save(self, tools: &Tools) -> &Path {
        match self {
            IpFamily::V4 => &tools.iptables_save,
            IpFamily::V6 => &tools.ip6tables_save,
        }
    }
}
