//! Addresses no workload or service may hold, checked by both loaders (the local file and xDS)
//! before anything reaches the store.
//!
//! A loopback or unspecified address names "this host" wherever it is used, never one pod:
//! a workload claiming `127.0.0.1` or `0.0.0.0` would make the tunnel deliver inbound traffic
//! to whatever listens on the node's (or the tunnel's) own loopback, and present that
//! workload's certificate for connections to it; a service VIP among them would pull an app's
//! local connections (in-pod rules capture loopback other than 127.0.0.1) into the mesh.
//! Istio's ztunnel accepts such addresses; nodetunnel refuses the whole config instead
//! (fail closed), naming the entry and the field.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why `ip` can never be a workload address or a service VIP, if it cannot. IPv4-mapped IPv6
/// addresses (`::ffff:127.0.0.1`) are judged as the IPv4 address they carry.
pub(crate) fn unusable_address(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        Some("a loopback address names the host itself, never a workload")
    } else if ip.is_unspecified() {
        Some("the unspecified address names the host itself, never a workload")
    } else {
        None
    }
}

/// Why a CIDR VIP can never be used, if it cannot: a range that lies wholly inside loopback
/// (127.0.0.0/8 or narrower) would, like a loopback VIP, pull an app's local connections into
/// the mesh. Wider ranges that merely contain loopback (an egress `0.0.0.0/0`) are accepted:
/// connections to loopback are never captured, so they cannot reach the service.
pub(crate) fn unusable_range(cidr: IpNet) -> Option<&'static str> {
    match cidr {
        IpNet::V4(v4) if v4.prefix_len() >= 8 && v4.network().is_loopback() => {
            Some("the range lies inside loopback, which names the host itself, never a service")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_wholly_inside_loopback_are_unusable() {
        for bad in ["127.0.0.0/8", "127.1.0.0/16", "127.0.0.0/24"] {
            assert!(unusable_range(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["0.0.0.0/0", "64.0.0.0/2", "10.0.0.0/8", "fd00::/8", "::/0"] {
            assert_eq!(unusable_range(good.parse().unwrap()), None, "{good}");
        }
    }

    #[test]
    fn loopback_and_unspecified_are_unusable_in_every_spelling() {
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(unusable_address(ip).is_some(), "{bad} was accepted");
        }
        for good in ["10.0.0.1", "128.0.0.1", "126.255.255.255", "fd00::1", "::2"] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(unusable_address(ip), None, "{good}");
        }
    }
}
