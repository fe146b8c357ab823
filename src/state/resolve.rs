//! Where an outbound connection goes: the original destination (a workload IP, a service VIP,
//! or anything else) resolved against the store to an upstream and the protocol to reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balance::{self, NoEndpoint};
use super::network_gateway::RemoteEndpoint;
use super::store::Store;
use super::types::{
    InboundProtocol, IpFamily, LbMode, LbScope, NamespacedHostname, Service, Workload,
};
use crate::identity::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ResolveError {
    #[error("service {service} has no port {port}")]
    UnknownServicePort {
        service: NamespacedHostname,
        port: u16,
    },
    #[error("service {service} has no healthy endpoint")]
    NoHealthyEndpoint { service: NamespacedHostname },
    #[error(
        "service {service} has no endpoint in the client's {scopes:?} (load balancing mode STRICT)"
    )]
    NoEndpointInScope {
        service: NamespacedHostname,
        scopes: Vec<LbScope>,
    },
    #[error("service {service}: every candidate endpoint has capacity 0")]
    NoEndpointCapacity { service: NamespacedHostname },
    #[error("endpoint {uid:?} of service {service} has no address{}", family_note(*.family))]
    EndpointWithoutAddress {
        service: NamespacedHostname,
        uid: String,
        family: Option<IpFamily>,
    },
    #[error("endpoint {uid:?} of service {service}: hostname {hostname:?} resolved to no address{}", family_note(*.family))]
    HostnameWithoutAddress {
        service: NamespacedHostname,
        uid: String,
        hostname: String,
        family: Option<IpFamily>,
    },
}

fn family_note(family: Option<IpFamily>) -> &'static str {
    match family {
        Some(IpFamily::V4) => " the service's IP families (IPv4 only) allow",
        Some(IpFamily::V6) => " the service's IP families (IPv6 only) allow",
        Some(IpFamily::Dual) | None => "",
    }
}

/// The chosen upstream of an outbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// A known workload; `address` is the workload IP and target port.
    Workload {
        workload: Arc<Workload>,
        address: SocketAddr,
        /// The service the client addressed, when it dialed a VIP.
        service: Option<Arc<Service>>,
    },
    /// Not in the mesh: connect straight to the original destination.
    Passthrough(SocketAddr),
}

/// What a destination resolves to: an upstream now, or an endpoint known by hostname only (a
/// ServiceEntry with DNS resolution) whose address is looked up when the connection is made
/// ([`HostnameEndpoint::at`]). Kept apart from [`Upstream`] so an upstream always has an
/// address and the lookup, which awaits, happens outside the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    Ready(Upstream),
    Lookup(HostnameEndpoint),
    /// A service endpoint on another network than the client's: reached only through its
    /// network gateway (`Store::through_network_gateway`), never dialed.
    Remote(RemoteEndpoint),
}

#[cfg(test)]
impl Resolution {
    /// The upstream of a resolution that needs no lookup (tests only).
    pub(crate) fn ready(self) -> Upstream {
        match self {
            Resolution::Ready(up) => up,
            Resolution::Lookup(h) => panic!("expected an upstream, got a lookup of {h:?}"),
            Resolution::Remote(r) => panic!("expected an upstream, got a remote endpoint {r:?}"),
        }
    }
}

/// A chosen endpoint whose address is a DNS name, with what is needed to finish the choice
/// once the name is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostnameEndpoint {
    pub workload: Arc<Workload>,
    pub service: Arc<Service>,
    /// The target port on the endpoint.
    pub port: u16,
    /// What the client dialed (the VIP): its family is preferred among the answers.
    pub dialed: SocketAddr,
}

impl HostnameEndpoint {
    pub(crate) fn hostname(&self) -> &str {
        &self.workload.hostname
    }

    /// Finishes the choice with the addresses `hostname` resolved to: those the service's IP
    /// families allow, preferring the dialed family, `pick` choosing an index below the count
    /// (ztunnel picks at random).
    pub(crate) fn at(
        self,
        resolved: &[IpAddr],
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        let family = self.service.ip_families;
        let allowed: Vec<IpAddr> = resolved
            .iter()
            .copied()
            .filter(|ip| family.is_none_or(|f| f.accepts(*ip)))
            .collect();
        let same: Vec<IpAddr> = allowed
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == self.dialed.is_ipv4())
            .collect();
        let candidates = if same.is_empty() { allowed } else { same };
        if candidates.is_empty() {
            return Err(ResolveError::HostnameWithoutAddress {
                service: self.service.key(),
                uid: self.workload.uid.clone(),
                hostname: self.workload.hostname.clone(),
                family,
            });
        }
        let ip = candidates[pick(candidates.len()).min(candidates.len() - 1)];
        Ok(Upstream::Workload {
            address: SocketAddr::new(ip, self.port),
            workload: self.workload,
            service: Some(self.service),
        })
    }
}

impl Upstream {
    /// True when the upstream sits behind a node tunnel that speaks HBONE.
    pub(crate) fn uses_hbone(&self) -> bool {
        matches!(self, Upstream::Workload { workload, .. } if workload.protocol == InboundProtocol::Hbone)
    }

    /// The address the application traffic is finally delivered to.
    pub(crate) fn target(&self) -> SocketAddr {
        match self {
            Upstream::Workload { address, .. } => *address,
            Upstream::Passthrough(address) => *address,
        }
    }

    /// Identities the upstream's tunnel may present: the workload's own, plus any the service
    /// declares in `subjectAltNames` (malformed ones are ignored: they can never match).
    pub(crate) fn expected_identities(&self) -> Vec<Identity> {
        match self {
            Upstream::Workload {
                workload, service, ..
            } => {
                let mut ids = vec![workload.identity()];
                if let Some(service) = service {
                    ids.extend(
                        service
                            .subject_alt_names
                            .iter()
                            .filter_map(|san| san.parse::<Identity>().ok()),
                    );
                }
                ids
            }
            Upstream::Passthrough(_) => Vec::new(),
        }
    }
}

impl Store {
    /// Resolves an original destination seen on `network` by a client in `client_namespace`
    /// (which picks among services of several namespaces sharing a VIP); `client`, when known,
    /// is the source workload a service's locality preferences compare endpoints with. `pick`
    /// gets the total capacity of a service's candidate endpoints and returns a point below
    /// it (see [`balance::choose`]), so callers decide the randomness and tests can be
    /// deterministic.
    pub(crate) fn resolve(
        &self,
        network: &str,
        client_namespace: Option<&str>,
        client: Option<&Workload>,
        dst: SocketAddr,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<Resolution, ResolveError> {
        if let Some(service) = self.service_by_vip(network, dst.ip(), client_namespace) {
            return self.resolve_service(network, service, client, dst, pick);
        }
        if let Some(workload) = self.workload_by_ip(network, dst.ip()) {
            return Ok(Resolution::Ready(Upstream::Workload {
                workload,
                address: dst,
                service: None,
            }));
        }
        Ok(Resolution::Ready(Upstream::Passthrough(dst)))
    }

    fn resolve_service(
        &self,
        network: &str,
        service: Arc<Service>,
        client: Option<&Workload>,
        dst: SocketAddr,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<Resolution, ResolveError> {
        let lb = service.load_balancing.as_ref();
        // ztunnel sends PASSTHROUGH services' traffic to the VIP as dialed, before any port
        // or endpoint lookup.
        if lb.is_some_and(|lb| lb.mode == LbMode::Passthrough) {
            return Ok(Resolution::Ready(Upstream::Passthrough(dst)));
        }
        let key = service.key();
        let service_port = dst.port();
        let Some(&default_target) = service.ports.get(&service_port) else {
            return Err(ResolveError::UnknownServicePort {
                service: key,
                port: service_port,
            });
        };
        let endpoints = self.endpoints(&key);
        let workload = match balance::choose(&endpoints, lb, client, pick) {
            Ok(w) => w.clone(),
            Err(NoEndpoint::Unhealthy) => {
                return Err(ResolveError::NoHealthyEndpoint { service: key })
            }
            Err(NoEndpoint::OutOfScope) => {
                return Err(ResolveError::NoEndpointInScope {
                    service: key,
                    scopes: lb
                        .map(|lb| lb.routing_preference.clone())
                        .unwrap_or_default(),
                })
            }
            Err(NoEndpoint::NoCapacity) => {
                return Err(ResolveError::NoEndpointCapacity { service: key })
            }
        };
        if workload.network != network {
            // No route leads there: only its network gateway (checked by the caller).
            return Ok(Resolution::Remote(RemoteEndpoint {
                workload,
                service,
                service_port,
            }));
        }
        let override_target = workload
            .services
            .get(&key)
            .and_then(|ports| ports.get(&service_port))
            .copied()
            .unwrap_or(0);
        let target_port = [override_target, default_target, service_port]
            .into_iter()
            .find(|p| *p != 0)
            .unwrap_or(service_port);
        match pick_address(&workload.workload_ips, dst.ip(), service.ip_families) {
            Some(ip) => Ok(Resolution::Ready(Upstream::Workload {
                address: SocketAddr::new(ip, target_port),
                workload,
                service: Some(service),
            })),
            // As ztunnel: an endpoint with no usable address but a hostname is looked up.
            None if !workload.hostname.is_empty() => Ok(Resolution::Lookup(HostnameEndpoint {
                workload,
                service,
                port: target_port,
                dialed: dst,
            })),
            None => Err(ResolveError::EndpointWithoutAddress {
                service: key,
                uid: workload.uid.clone(),
                family: service.ip_families,
            }),
        }
    }
}

/// An endpoint address the service's IP families allow, preferring the family of the one the
/// client dialed (ztunnel's rule: otherwise pure IPv4 or IPv6 clients of dual-stack endpoints
/// break).
pub(super) fn pick_address(
    ips: &[IpAddr],
    dialed: IpAddr,
    family: Option<IpFamily>,
) -> Option<IpAddr> {
    let mut allowed = ips
        .iter()
        .filter(|ip| family.is_none_or(|f| f.accepts(**ip)));
    let first = allowed.clone().next();
    allowed
        .find(|ip| ip.is_ipv4() == dialed.is_ipv4())
        .or(first)
        .copied()
}

#[cfg(test)]
mod tests;
