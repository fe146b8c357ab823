//! Where an outbound connection goes: the original destination (a workload IP, a service VIP,
//! or anything else) resolved against the store to an upstream and the protocol to reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balance::{self, NoEndpoint};
use super::store::Store;
use super::types::{InboundProtocol, LbMode, LbScope, NamespacedHostname, Service, Workload};
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
    #[error("endpoint {uid:?} of service {service} has no address")]
    EndpointWithoutAddress {
        service: NamespacedHostname,
        uid: String,
    },
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
    ) -> Result<Upstream, ResolveError> {
        if let Some(service) = self.service_by_vip(network, dst.ip(), client_namespace) {
            return self.resolve_service(service, client, dst, pick);
        }
        if let Some(workload) = self.workload_by_ip(network, dst.ip()) {
            return Ok(Upstream::Workload {
                workload,
                address: dst,
                service: None,
            });
        }
        Ok(Upstream::Passthrough(dst))
    }

    fn resolve_service(
        &self,
        service: Arc<Service>,
        client: Option<&Workload>,
        dst: SocketAddr,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<Upstream, ResolveError> {
        let lb = service.load_balancing.as_ref();
        // ztunnel sends PASSTHROUGH services' traffic to the VIP as dialed, before any port
        // or endpoint lookup.
        if lb.is_some_and(|lb| lb.mode == LbMode::Passthrough) {
            return Ok(Upstream::Passthrough(dst));
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
        let ip = pick_address(&workload.workload_ips, dst.ip()).ok_or_else(|| {
            ResolveError::EndpointWithoutAddress {
                service: key.clone(),
                uid: workload.uid.clone(),
            }
        })?;
        Ok(Upstream::Workload {
            address: SocketAddr::new(ip, target_port),
            workload,
            service: Some(service),
        })
    }
}

/// Prefers an address of the same family as the one the client dialed.
fn pick_address(ips: &[IpAddr], dialed: IpAddr) -> Option<IpAddr> {
    ips.iter()
        .find(|ip| ip.is_ipv4() == dialed.is_ipv4())
        .or_else(|| ips.first())
        .copied()
}

#[cfg(test)]
mod tests;
