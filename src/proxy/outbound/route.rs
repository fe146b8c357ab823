//! Outbound's decision: where one captured connection goes and how, computed from the mesh
//! state alone (no sockets), so it can be logged before anything is dialed and tested directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::HBONE_PORT;
use crate::identity::Identity;
use crate::proxy::access::{base_labels, Description};
use crate::proxy::{ProxyError, Scope};
use crate::state::{HostnameEndpoint, Resolution, Service, Store, Upstream, WaypointHop, Workload};

/// Where a captured connection goes, decided before any upstream socket exists.
#[derive(Clone, Debug)]
pub struct Route {
    /// The local workload that opened the connection.
    pub source: Arc<Workload>,
    /// The address the client dialed: a service VIP, a workload, or something outside the
    /// mesh. Kept so the access log shows it next to the endpoint that was chosen.
    pub original_dst: SocketAddr,
    /// What `original_dst` resolved to.
    pub upstream: Upstream,
    pub protocol: OutboundProtocol,
    /// The waypoint instance's HBONE address, when the destination names a waypoint: then
    /// `upstream` is that instance, and the CONNECT asks it for `original_dst` as dialed.
    pub waypoint: Option<SocketAddr>,
}

/// How the connection travels to its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundProtocol {
    /// A CONNECT stream to the target through the destination's tunnel.
    Hbone {
        /// The destination tunnel's HBONE address (`<endpoint ip>:15008`).
        tunnel: SocketAddr,
        /// The identities that tunnel may prove (the workload's, plus the service's SANs).
        expected_identities: Vec<Identity>,
    },
    /// Plain TCP straight to the target: it is outside the mesh, or its workload takes plain
    /// TCP.
    Tcp,
}

impl Route {
    /// The address the application bytes are delivered to (the chosen endpoint and port), and
    /// the CONNECT target: through a waypoint, the original destination (the waypoint
    /// chooses the endpoint).
    pub fn target(&self) -> SocketAddr {
        match self.waypoint {
            Some(_) => self.original_dst,
            None => self.upstream.target(),
        }
    }

    /// The access-log description of this route, for a client at `src`.
    pub fn describe(&self, src: SocketAddr) -> Description {
        let mut labels = base_labels("outbound").with_source(Some(&self.source));
        if let Upstream::Workload {
            workload, service, ..
        } = &self.upstream
        {
            labels = labels
                .with_destination(Some(workload))
                .with_destination_service(service.as_deref());
        }
        let (protocol, dst_identity) = match &self.protocol {
            OutboundProtocol::Hbone {
                expected_identities,
                ..
            } => {
                labels.connection_security_policy = "mutual_tls";
                // The identity mTLS will prove; plain TCP proves none (ztunnel's rule).
                labels.source_principal = self.source.identity().to_string();
                ("HBONE", expected_identities.first().cloned())
            }
            OutboundProtocol::Tcp => ("TCP", None),
        };
        Description {
            direction: "outbound",
            src,
            original_dst: Some(self.original_dst),
            dst: Some(self.target()),
            src_identity: Some(self.source.identity()),
            dst_identity,
            protocol,
            labels,
            waypoint: self.waypoint,
        }
    }
}

/// The routing decision: complete, or waiting on the DNS lookup of the chosen endpoint's
/// hostname (done by the caller outside the state lock, then [`PendingRoute::finish`]).
#[derive(Clone, Debug)]
pub enum Routed {
    Ready(Route),
    Lookup(PendingRoute),
}

/// A route whose endpoint is known by hostname only.
#[derive(Clone, Debug)]
pub struct PendingRoute {
    source: Arc<Workload>,
    original_dst: SocketAddr,
    endpoint: HostnameEndpoint,
}

impl PendingRoute {
    /// The name to look up.
    pub fn hostname(&self) -> &str {
        self.endpoint.hostname()
    }

    /// Completes the route with the addresses the hostname resolved to; `pick` chooses an
    /// index below the count of usable ones.
    pub fn finish(
        self,
        resolved: &[IpAddr],
        pick: impl FnOnce(usize) -> usize,
    ) -> Result<Route, ProxyError> {
        let upstream = self.endpoint.at(resolved, pick)?;
        Ok(Route::new(self.source, self.original_dst, upstream))
    }
}

impl Route {
    fn new(source: Arc<Workload>, original_dst: SocketAddr, upstream: Upstream) -> Route {
        let protocol = if upstream.uses_hbone() {
            OutboundProtocol::Hbone {
                tunnel: SocketAddr::new(upstream.target().ip(), HBONE_PORT),
                expected_identities: upstream.expected_identities(),
            }
        } else {
            OutboundProtocol::Tcp
        };
        Route {
            source,
            original_dst,
            upstream,
            protocol,
            waypoint: None,
        }
    }

    /// A route through the destination's waypoint instance `hop`; `service` is the dialed
    /// service, if the client dialed one.
    fn via_waypoint(
        source: Arc<Workload>,
        original_dst: SocketAddr,
        hop: WaypointHop,
        service: Option<Arc<Service>>,
    ) -> Route {
        let protocol = OutboundProtocol::Hbone {
            tunnel: hop.address,
            expected_identities: hop.expected_identities(),
        };
        Route {
            source,
            original_dst,
            upstream: Upstream::Workload {
                workload: hop.workload,
                address: hop.address,
                service,
            },
            protocol,
            waypoint: Some(hop.address),
        }
    }
}

/// Routes a connection from `source_ip` to `original_dst`: the source must be a workload this
/// scope serves; the destination is resolved on `network`, `pick` choosing among a service's
/// endpoints (given their total capacity, returns a point below it).
pub fn route(
    store: &Store,
    network: &str,
    scope: &Scope,
    source_ip: IpAddr,
    original_dst: SocketAddr,
    pick: impl FnOnce(u64) -> u64,
) -> Result<Routed, ProxyError> {
    let source = scope
        .local_workload(store, network, source_ip)
        .map_err(|miss| {
            ProxyError::local_miss(miss, source_ip, ProxyError::UnknownSource(source_ip))
        })?;
    // A destination with a waypoint goes there or nowhere (fail closed).
    if let Some(required) = store.required_waypoint(network, &source, original_dst) {
        let hop = store.resolve_waypoint(&required, &source, original_dst, pick)?;
        let route = Route::via_waypoint(source, original_dst, hop, required.service);
        return Ok(Routed::Ready(route));
    }
    let resolution = store.resolve(
        network,
        Some(&source.namespace),
        Some(&source),
        original_dst,
        pick,
    )?;
    Ok(match resolution {
        Resolution::Ready(upstream) => Routed::Ready(Route::new(source, original_dst, upstream)),
        Resolution::Lookup(endpoint) => Routed::Lookup(PendingRoute {
            source,
            original_dst,
            endpoint,
        }),
    })
}

#[cfg(test)]
mod tests;
