//! Where an outbound connection goes: the original destination (a workload IP, a service VIP,
//! or anything else) resolved against the store to an upstream and the protocol to reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::store::Store;
use super::types::{HealthStatus, InboundProtocol, NamespacedHostname, Service, Workload};
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
    /// (which picks among services of several namespaces sharing a VIP). `pick` chooses among
    /// the healthy endpoints of a service (given their count, returns an index below it), so
    /// callers decide the spreading policy and tests can be deterministic.
    pub(crate) fn resolve(
        &self,
        network: &str,
        client_namespace: Option<&str>,
        dst: SocketAddr,
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        if let Some(service) = self.service_by_vip(network, dst.ip(), client_namespace) {
            return self.resolve_service(service, dst, pick);
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
        dst: SocketAddr,
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        let key = service.key();
        let service_port = dst.port();
        let Some(&default_target) = service.ports.get(&service_port) else {
            return Err(ResolveError::UnknownServicePort {
                service: key,
                port: service_port,
            });
        };
        let healthy: Vec<Arc<Workload>> = self
            .endpoints(&key)
            .into_iter()
            .filter(|w| w.status == HealthStatus::Healthy)
            .collect();
        if healthy.is_empty() {
            return Err(ResolveError::NoHealthyEndpoint { service: key });
        }
        let workload = healthy[pick(healthy.len()) % healthy.len()].clone();
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
