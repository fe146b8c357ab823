//! Where an outbound connection goes: the original destination (a workload IP, a service VIP,
//! or anything else) resolved against the store to an upstream and the protocol to reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::store::Store;
use super::types::{HealthStatus, InboundProtocol, NamespacedHostname, Service, Workload};
use crate::identity::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
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
pub enum Upstream {
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
    pub fn uses_hbone(&self) -> bool {
        matches!(self, Upstream::Workload { workload, .. } if workload.protocol == InboundProtocol::Hbone)
    }

    /// The address the application traffic is finally delivered to.
    pub fn target(&self) -> SocketAddr {
        match self {
            Upstream::Workload { address, .. } => *address,
            Upstream::Passthrough(address) => *address,
        }
    }

    /// Identities the upstream's tunnel may present: the workload's own, plus any the service
    /// declares in `subjectAltNames` (malformed ones are ignored: they can never match).
    pub fn expected_identities(&self) -> Vec<Identity> {
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
    /// Resolves an original destination seen on `network`. `pick` chooses among the healthy
    /// endpoints of a service (given their count, returns an index below it), so callers decide
    /// the spreading policy and tests can be deterministic.
    pub fn resolve(
        &self,
        network: &str,
        dst: SocketAddr,
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        if let Some(service) = self.service_by_vip(network, dst.ip()) {
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
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::state::fixtures::{service, workload};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn mesh() -> (Store, NamespacedHostname) {
        let mut store = Store::default();
        let mut svc = service("web.default.svc.cluster.local", "/10.96.0.1");
        svc.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/web-san".into()];
        let key = svc.key();
        store.insert_service(svc).unwrap();
        let mut a = workload("a", "10.0.0.1");
        a.services.insert(key.clone(), HashMap::from([(80, 9090)]));
        let mut b = workload("b", "10.0.0.2");
        b.services.insert(key.clone(), HashMap::new());
        store.insert_workload(a).unwrap();
        store.insert_workload(b).unwrap();
        (store, key)
    }

    #[test]
    fn workload_ip_resolves_to_that_workload() {
        let (store, _) = mesh();
        let up = store.resolve("", addr("10.0.0.2:7000"), |_| 0).unwrap();
        assert!(up.uses_hbone());
        assert_eq!(up.target(), addr("10.0.0.2:7000"));
        assert_eq!(
            up.expected_identities(),
            vec![Identity::new("cluster.local", "default", "b")]
        );
    }

    #[test]
    fn unknown_ip_passes_through() {
        let (store, _) = mesh();
        let up = store.resolve("", addr("192.0.2.9:443"), |_| 0).unwrap();
        assert_eq!(up, Upstream::Passthrough(addr("192.0.2.9:443")));
        assert!(!up.uses_hbone());
        assert!(up.expected_identities().is_empty());
    }

    #[test]
    fn tcp_workload_does_not_use_hbone() {
        let (mut store, _) = mesh();
        let mut w = workload("plain", "10.0.0.9");
        w.protocol = InboundProtocol::Tcp;
        store.insert_workload(w).unwrap();
        assert!(!store
            .resolve("", addr("10.0.0.9:80"), |_| 0)
            .unwrap()
            .uses_hbone());
    }

    #[test]
    fn vip_maps_ports_and_spreads_across_endpoints() {
        let (store, _) = mesh();
        // Endpoint a overrides the target port; b uses the service default.
        let a = store.resolve("", addr("10.96.0.1:80"), |_| 0).unwrap();
        assert_eq!(a.target(), addr("10.0.0.1:9090"));
        let b = store.resolve("", addr("10.96.0.1:80"), |_| 1).unwrap();
        assert_eq!(b.target(), addr("10.0.0.2:8080"));
        let ids = b.expected_identities();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].service_account, "web-san");
    }

    #[test]
    fn vip_errors_are_specific() {
        let (mut store, key) = mesh();
        assert_eq!(
            store.resolve("", addr("10.96.0.1:81"), |_| 0).unwrap_err(),
            ResolveError::UnknownServicePort {
                service: key.clone(),
                port: 81
            }
        );
        for uid in ["a", "b"] {
            let mut w = (*store.workload_by_uid(uid).unwrap()).clone();
            w.status = HealthStatus::Unhealthy;
            store.insert_workload(w).unwrap();
        }
        assert_eq!(
            store.resolve("", addr("10.96.0.1:80"), |_| 0).unwrap_err(),
            ResolveError::NoHealthyEndpoint { service: key }
        );
    }
}
