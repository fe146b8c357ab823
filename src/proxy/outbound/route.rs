//! Outbound's decision: where one captured connection goes and how, computed from the mesh
//! state alone (no sockets), so it can be logged before anything is dialed and tested directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::HBONE_PORT;
use crate::identity::Identity;
use crate::proxy::access::{base_labels, Description};
use crate::proxy::{ProxyError, Scope};
use crate::state::{
    DoubleHbone, HostnameEndpoint, Resolution, Service, Store, Upstream, WaypointHop, Workload,
};

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
    /// The target is on another network: an outer HBONE connection to its network gateway
    /// carries an inner one to the destination's tunnel, both CONNECTs to `target`
    /// (`hostname:port`). Neither layer is pooled.
    DoubleHbone {
        /// The gateway instance's HBONE address.
        gateway: SocketAddr,
        /// The identities the gateway may prove (outer TLS).
        gateway_identities: Vec<Identity>,
        /// `hostname:service port`, the CONNECT target of both layers.
        target: String,
        /// The identities the destination tunnel may prove (inner TLS, end to end).
        final_identities: Vec<Identity>,
    },
}

impl Route {
    /// The address the application bytes are delivered to (the chosen endpoint and port), and
    /// the CONNECT target: through a waypoint, the original destination (the waypoint
    /// chooses the endpoint).
    pub fn target(&self) -> SocketAddr {
        match (&self.protocol, self.waypoint) {
            // What is dialed: the gateway (the target is a hostname, see `protocol`).
            (OutboundProtocol::DoubleHbone { gateway, .. }, _) => *gateway,
            (_, Some(_)) => self.original_dst,
            (_, None) => self.upstream.target(),
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
        let mut hbone_target = None;
        let mut network_gateway = None;
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
            OutboundProtocol::DoubleHbone {
                gateway,
                target,
                final_identities,
                ..
            } => {
                labels.connection_security_policy = "mutual_tls";
                labels.source_principal = self.source.identity().to_string();
                hbone_target = Some(target.as_str().into());
                network_gateway = Some(*gateway);
                ("HBONE", final_identities.first().cloned())
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
            hbone_target,
            network_gateway,
            opaque: false,
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

impl Route {
    /// A route to `remote` (a service endpoint on another network) through its network
    /// gateway, as `double` says.
    fn through_gateway(
        source: Arc<Workload>,
        original_dst: SocketAddr,
        remote: crate::state::RemoteEndpoint,
        double: DoubleHbone,
    ) -> Route {
        let protocol = OutboundProtocol::DoubleHbone {
            gateway: double.gateway.address,
            gateway_identities: double.gateway.expected_identities(),
            target: double.target,
            final_identities: double.final_identities,
        };
        Route {
            source,
            original_dst,
            // The record names the destination the client meant; `target()` is the gateway.
            upstream: Upstream::Workload {
                address: double.gateway.address,
                workload: remote.workload,
                service: Some(remote.service),
            },
            protocol,
            waypoint: None,
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
    mut pick: impl FnMut(u64) -> u64,
) -> Result<Routed, ProxyError> {
    let source = scope
        .local_workload(store, network, source_ip)
        .map_err(|miss| {
            ProxyError::local_miss(miss, source_ip, ProxyError::UnknownSource(source_ip))
        })?;
    // A destination with a waypoint goes there or nowhere (fail closed).
    if let Some(required) = store.required_waypoint(network, &source, original_dst) {
        let hop = store.resolve_waypoint(&required, &source, original_dst, &mut pick)?;
        let route = Route::via_waypoint(source, original_dst, hop, required.service);
        return Ok(Routed::Ready(route));
    }
    let resolution = store.resolve(
        network,
        Some(&source.namespace),
        Some(&source),
        original_dst,
        &mut pick,
    )?;
    Ok(match resolution {
        Resolution::Ready(upstream) => Routed::Ready(Route::new(source, original_dst, upstream)),
        Resolution::Lookup(endpoint) => Routed::Lookup(PendingRoute {
            source,
            original_dst,
            endpoint,
        }),
        // On another network: through its gateway or not at all (fail closed).
        Resolution::Remote(remote) => {
            let double = store.through_network_gateway(
                &remote,
                network,
                &source,
                original_dst,
                &mut pick,
            )?;
            Routed::Ready(Route::through_gateway(source, original_dst, remote, double))
        }
    })
}

#[cfg(test)]
mod tests;
