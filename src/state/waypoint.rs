//! Waypoints, read from the mesh state: which destination's traffic must pass through one,
//! which workloads make up a waypoint (they are exempt from it, and only they may deliver to
//! a workload that has it), and which instance a connection is sent to.
//!
//! The rules are ztunnel's: traffic addressed to a service VIP follows the service's
//! waypoint; traffic addressed to a workload follows the workload's. A service without a
//! waypoint is never diverted to its endpoints' waypoints (the client asked for the service).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balance::{self, NoEndpoint};
use super::resolve::pick_address;
use super::store::Store;
use super::types::{GatewayAddress, GatewayDestination, HealthStatus, Service, Workload};
use crate::identity::Identity;

/// Why a destination's waypoint cannot be reached. The connection is refused: sending it
/// straight to the destination would skip the waypoint's L7 policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WaypointError {
    #[error("{owner} names waypoint {waypoint}, which the mesh state does not know")]
    Unknown {
        owner: String,
        waypoint: GatewayAddress,
    },
    #[error("{owner} names waypoint {waypoint}, which has no healthy instance")]
    NoHealthyInstance {
        owner: String,
        waypoint: GatewayAddress,
    },
    #[error("{owner} names waypoint {waypoint}, whose instance {uid:?} has no usable address")]
    InstanceWithoutAddress {
        owner: String,
        waypoint: GatewayAddress,
        uid: String,
    },
}

/// The destination's waypoint a connection must go through, and whose it is (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequiredWaypoint {
    /// `service <ns>/<host>` or `workload <uid>`.
    pub owner: String,
    pub waypoint: GatewayAddress,
    /// The dialed service, when the destination is a service VIP.
    pub service: Option<Arc<Service>>,
}

/// One waypoint instance, chosen for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WaypointHop {
    pub workload: Arc<Workload>,
    /// The waypoint's own service, when it was referenced through one.
    pub service: Option<Arc<Service>>,
    /// The instance's HBONE listener.
    pub address: SocketAddr,
}

impl WaypointHop {
    /// Identities the waypoint may prove: its workload's, plus its service's SANs.
    pub(crate) fn expected_identities(&self) -> Vec<Identity> {
        let mut ids = vec![self.workload.identity()];
        if let Some(service) = &self.service {
            ids.extend(
                service
                    .subject_alt_names
                    .iter()
                    .filter_map(|san| san.parse::<Identity>().ok()),
            );
        }
        ids
    }
}

impl Store {
    /// The waypoint a connection from `client` to `dst` (seen on `network`) must go through,
    /// if any. A client that is itself an instance of that waypoint is exempt: the waypoint's
    /// own forwarded traffic is never captured back into it.
    pub(crate) fn required_waypoint(
        &self,
        network: &str,
        client: &Workload,
        dst: SocketAddr,
    ) -> Option<RequiredWaypoint> {
        let required = if let Some(service) =
            self.service_by_vip(network, dst.ip(), Some(&client.namespace))
        {
            RequiredWaypoint {
                owner: format!("service {}", service.key()),
                waypoint: service.waypoint.clone()?,
                service: Some(service),
            }
        } else {
            let workload = self.workload_by_ip(network, dst.ip())?;
            RequiredWaypoint {
                owner: format!("workload {}", workload.uid),
                waypoint: workload.waypoint.clone()?,
                service: None,
            }
        };
        let is_member = self
            .waypoint_instances(&required.waypoint)
            .iter()
            .any(|w| w.uid == client.uid);
        (!is_member).then_some(required)
    }

    /// The workloads a waypoint reference stands for: the workload at its address, or the
    /// endpoints of the service it names (by VIP or hostname). Empty when unknown.
    pub(crate) fn waypoint_instances(&self, waypoint: &GatewayAddress) -> Vec<Arc<Workload>> {
        match &waypoint.destination {
            GatewayDestination::Address(a) => {
                if let Some(service) = self.service_by_vip(&a.network, a.address, None) {
                    return self.endpoints(&service.key());
                }
                self.workload_by_ip(&a.network, a.address)
                    .into_iter()
                    .collect()
            }
            GatewayDestination::Hostname(key) => self.endpoints(key),
        }
    }

    /// True when a peer proving `identity` from `src_ip` is an instance of `waypoint`
    /// (ztunnel's test: the identity and the address must both be the instance's).
    pub(crate) fn is_from_waypoint(
        &self,
        waypoint: &GatewayAddress,
        identity: &Identity,
        src_ip: IpAddr,
    ) -> bool {
        self.waypoint_instances(waypoint)
            .iter()
            .any(|w| w.identity() == *identity && w.workload_ips.contains(&src_ip))
    }

    /// Chooses the waypoint instance for a connection from `client` that dialed `dialed`: the
    /// workload at the reference's address, or one of its service's endpoints (by the
    /// service's load balancing, preferring the dialed address family). `pick` as in
    /// [`Store::resolve`].
    pub(crate) fn resolve_waypoint(
        &self,
        required: &RequiredWaypoint,
        client: &Workload,
        dialed: SocketAddr,
        pick: impl FnOnce(u64) -> u64,
    ) -> Result<WaypointHop, WaypointError> {
        let waypoint = &required.waypoint;
        let port = waypoint.hbone_mtls_port;
        let unknown = || WaypointError::Unknown {
            owner: required.owner.clone(),
            waypoint: waypoint.clone(),
        };
        let service = match &waypoint.destination {
            GatewayDestination::Address(a) => {
                match self.service_by_vip(&a.network, a.address, Some(&client.namespace)) {
                    Some(service) => service,
                    None => {
                        let workload = self
                            .workload_by_ip(&a.network, a.address)
                            .ok_or_else(unknown)?;
                        if workload.status != HealthStatus::Healthy {
                            return Err(WaypointError::NoHealthyInstance {
                                owner: required.owner.clone(),
                                waypoint: waypoint.clone(),
                            });
                        }
                        // Referenced by IP: that IP is the destination, whatever the dialed family.
                        return Ok(WaypointHop {
                            workload,
                            service: None,
                            address: SocketAddr::new(a.address, port),
                        });
                    }
                }
            }
            GatewayDestination::Hostname(key) => self.service(key).ok_or_else(unknown)?,
        };
        let endpoints = self.endpoints(&service.key());
        let workload = match balance::choose(
            &endpoints,
            service.load_balancing.as_ref(),
            Some(client),
            pick,
        ) {
            Ok(w) => w.clone(),
            Err(NoEndpoint::Unhealthy | NoEndpoint::OutOfScope | NoEndpoint::NoCapacity) => {
                return Err(WaypointError::NoHealthyInstance {
                    owner: required.owner.clone(),
                    waypoint: waypoint.clone(),
                })
            }
        };
        let Some(ip) = pick_address(&workload.workload_ips, dialed.ip(), service.ip_families)
        else {
            return Err(WaypointError::InstanceWithoutAddress {
                owner: required.owner.clone(),
                waypoint: waypoint.clone(),
                uid: workload.uid.clone(),
            });
        };
        Ok(WaypointHop {
            workload,
            service: Some(service),
            address: SocketAddr::new(ip, port),
        })
    }
}

#[cfg(test)]
mod tests;
