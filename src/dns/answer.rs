//! Name → addresses, from the mesh state as it is now.

use std::net::IpAddr;

use crate::state::{NamespacedHostname, Store};

/// Which address family a query asks for (A or AAAA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn holds(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// What the mesh says about a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MeshAnswer {
    /// A mesh service with addresses; those of the asked family (empty: NODATA, since the name
    /// exists).
    Addresses(Vec<IpAddr>),
    /// Not a mesh name with an address: the upstream resolver decides.
    Unknown,
}

/// Looks `names` up (the first that is a mesh service with an address wins) for a client in
/// `namespace` ("" when unknown: ztunnel's preference among same-named services then falls to
/// the canonical one). A service's addresses are its VIPs (including the ones the control
/// plane auto-allocated to a ServiceEntry, which arrive as ordinary VIPs); a service without
/// VIPs (headless) answers with its endpoints' workload addresses. A service with neither is
/// left to the upstream: a ServiceEntry known by hostname only is a real DNS name there.
pub(crate) fn lookup(
    store: &Store,
    names: &[String],
    namespace: &str,
    family: Family,
) -> MeshAnswer {
    for name in names {
        let Some(service) = store.service_by_hostname(name, namespace) else {
            continue;
        };
        let mut addrs: Vec<IpAddr> = service.vips.iter().map(|vip| vip.address).collect();
        if addrs.is_empty() {
            let key = NamespacedHostname {
                namespace: service.namespace.clone(),
                hostname: service.hostname.clone(),
            };
            addrs = store
                .endpoints(&key)
                .iter()
                .flat_map(|w| w.workload_ips.iter().copied())
                .collect();
        }
        if addrs.is_empty() {
            continue;
        }
        let mut of_family: Vec<IpAddr> = Vec::new();
        for ip in addrs.into_iter().filter(|ip| family.holds(ip)) {
            if !of_family.contains(&ip) {
                of_family.push(ip);
            }
        }
        return MeshAnswer::Addresses(of_family);
    }
    MeshAnswer::Unknown
}
