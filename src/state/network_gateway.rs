//! Network gateways (multi-network meshes), read from the mesh state: how a client reaches a
//! service endpoint on another network, and which endpoint a gateway forwards to.
//!
//! The rules are ztunnel's. A service endpoint whose `network` is not the client's is never
//! dialed directly (there is no route to it): the connection goes to the endpoint's
//! `network_gateway` with double HBONE. Both CONNECT layers name the service as
//! `hostname:service port` — the gateway routes by it without reading the inner layer, and
//! the destination's tunnel maps it to a target port. A workload on another network is only
//! reachable through a service: addressing it by IP finds nothing on the client's network.
//!
//! The gateway side (`proxy/gateway.rs`) picks, for a `hostname:port` target, a healthy
//! HBONE endpoint of that service on its own network, by the service's load balancing, and
//! forwards the inner stream to that endpoint's tunnel (15008), as Istio's east-west gateway
//! does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balance::{self, NoEndpoint};
use super::resolve::pick_address;
use super::store::Store;
use super::types::{InboundProtocol, Service, Workload};
use super::waypoint::{RequiredWaypoint, WaypointError, WaypointHop};
use crate::config::HBONE_PORT;
use crate::identity::Identity;

/// A service endpoint chosen for a client on another network: reached only through its
/// network gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteEndpoint {
    pub workload: Arc<Workload>,
    pub service: Arc<Service>,
    /// The service port the client dialed (the CONNECT target's port on both layers).
    pub service_port: u16,
}

/// Why a destination on another network cannot be reached. The connection is refused: there
/// is no direct route, and guessing one would send the bytes somewhere unverified.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum NetworkGatewayError {
    #[error("endpoint {uid:?} of service {service} is on network {network:?} (ours is {ours:?}) and names no network gateway")]
    NoGateway {
        uid: String,
        service: String,
        network: String,
        ours: String,
    },
    #[error("endpoint {uid:?} is on network {network:?}: its network gateway {gateway} is not in the mesh state")]
    Unknown {
        uid: String,
        network: String,
        gateway: String,
    },
    #[error("endpoint {uid:?} is on network {network:?}: its network gateway {gateway} has no healthy instance")]
    NoHealthyInstance {
        uid: String,
        network: String,
        gateway: String,
    },
    #[error("endpoint {uid:?} is on network {network:?}: network gateway {gateway}'s instance {instance:?} has no usable address")]
    InstanceWithoutAddress {
        uid: String,
        network: String,
        gateway: String,
        instance: String,
    },
}

/// A double-HBONE route: the outer layer to the gateway, the inner one to the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DoubleHbone {
    /// The gateway instance and its HBONE listener (the outer layer's peer).
    pub gateway: WaypointHop,
    /// The CONNECT target of both layers: `hostname:service port`.
    pub target: String,
    /// Identities the inner layer's peer (the destination tunnel, chosen by the gateway) may
    /// prove: every endpoint of the service on the remote endpoint's network, plus the
    /// service's SANs. The client cannot know which endpoint the gateway picks, so any of
    /// them is accepted — and nothing else.
    pub final_identities: Vec<Identity>,
}

/// Why a gateway cannot forward a `hostname:port` target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum GatewayForwardError {
    #[error("no service {hostname:?} in the mesh state")]
    UnknownService { hostname: String },
    #[error("service {service} has no port {port}")]
    UnknownPort { service: String, port: u16 },
    #[error(
        "service {service} has no healthy HBONE endpoint with an address on network {network:?}"
    )]
    NoEndpoint { service: String, network: String },
}

impl Store {
    /// The double-HBONE route to `remote` for `client`, which dialed `dialed` (its family is
    /// preferred among a gateway service's endpoint addresses). `pick` as in
    /// [`Store::resolve`].
    pub(crate) fn through_network_gateway(
        &self,
        remote: &RemoteEndpoint,
        ours: &str,
        client: &Workload,
        dialed: SocketAddr,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<DoubleHbone, NetworkGatewayError> {
        let w = &remote.workload;
        let Some(gateway) = w.network_gateway.clone() else {
            return Err(NetworkGatewayError::NoGateway {
                uid: w.uid.clone(),
                service: remote.service.key().to_string(),
                network: w.network.clone(),
                ours: ours.to_string(),
            });
        };
        // A gateway reference resolves exactly as a waypoint reference does (an instance by
        // address, or an endpoint of the service it names).
        let required = RequiredWaypoint {
            owner: format!("workload {}", w.uid),
            waypoint: gateway.clone(),
            service: None,
        };
        let hop = self
            .resolve_waypoint(&required, client, dialed, pick)
            .map_err(|e| match e {
                WaypointError::Unknown { .. } => NetworkGatewayError::Unknown {
                    uid: w.uid.clone(),
                    network: w.network.clone(),
                    gateway: gateway.to_string(),
                },
                WaypointError::NoHealthyInstance { .. } => NetworkGatewayError::NoHealthyInstance {
                    uid: w.uid.clone(),
                    network: w.network.clone(),
                    gateway: gateway.to_string(),
                },
                WaypointError::InstanceWithoutAddress { uid, .. } => {
                    NetworkGatewayError::InstanceWithoutAddress {
                        uid: w.uid.clone(),
                        network: w.network.clone(),
                        gateway: gateway.to_string(),
                        instance: uid,
                    }
                }
            })?;
        let mut final_identities: Vec<Identity> = Vec::new();
        let endpoints = self.endpoints(&remote.service.key());
        let candidates =
            std::iter::once(w).chain(endpoints.iter().filter(|e| e.network == w.network));
        for endpoint in candidates {
            let id = endpoint.identity();
            if !final_identities.contains(&id) {
                final_identities.push(id);
            }
        }
        for san in &remote.service.subject_alt_names {
            if let Ok(id) = san.parse::<Identity>() {
                if !final_identities.contains(&id) {
                    final_identities.push(id);
                }
            }
        }
        Ok(DoubleHbone {
            gateway: hop,
            target: format!("{}:{}", remote.service.hostname, remote.service_port),
            final_identities,
        })
    }

    /// The endpoint tunnel a gateway on `network` forwards a CONNECT to service `hostname`
    /// port `port` to: a healthy HBONE endpoint of the service on `network` (by the service's
    /// load balancing, `pick` as in [`Store::resolve`]), at its tunnel's port. The service is
    /// looked up preferring `namespace` (the gateway's), as ztunnel does for hostname targets.
    pub(crate) fn gateway_forward_endpoint(
        &self,
        network: &str,
        namespace: &str,
        hostname: &str,
        port: u16,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<(Arc<Workload>, Arc<Service>, SocketAddr), GatewayForwardError> {
        let service = self
            .service_by_hostname(hostname, namespace)
            .ok_or_else(|| GatewayForwardError::UnknownService {
                hostname: hostname.to_string(),
            })?;
        if !service.ports.contains_key(&port) {
            return Err(GatewayForwardError::UnknownPort {
                service: service.key().to_string(),
                port,
            });
        }
        let no_endpoint = || GatewayForwardError::NoEndpoint {
            service: service.key().to_string(),
            network: network.to_string(),
        };
        // Only endpoints the gateway can reach and whose tunnel speaks HBONE: the inner layer
        // is HBONE and must end at a tunnel, never at a plain-TCP app.
        let endpoints: Vec<Arc<Workload>> = self
            .endpoints(&service.key())
            .into_iter()
            .filter(|e| {
                e.network == network
                    && e.protocol == InboundProtocol::Hbone
                    && usable_address(e, &service).is_some()
            })
            .collect();
        let chosen = match balance::choose(&endpoints, service.load_balancing.as_ref(), None, pick)
        {
            Ok(w) => w.clone(),
            Err(NoEndpoint::Unhealthy | NoEndpoint::OutOfScope | NoEndpoint::NoCapacity) => {
                return Err(no_endpoint())
            }
        };
        let ip = usable_address(&chosen, &service).ok_or_else(no_endpoint)?;
        Ok((chosen, service, SocketAddr::new(ip, HBONE_PORT)))
    }
}

/// The address a gateway reaches `endpoint` on: its first one the service's IP families allow.
fn usable_address(endpoint: &Workload, service: &Service) -> Option<IpAddr> {
    let first = *endpoint.workload_ips.first()?;
    pick_address(&endpoint.workload_ips, first, service.ip_families)
}

#[cfg(test)]
mod tests;
