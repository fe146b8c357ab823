//! Outbound capture (15001): a workload's redirected connection is routed to its real
//! destination ([`route`]), recorded once, then carried there over HBONE or passed through as
//! plain TCP.

mod route;

pub use route::{route, OutboundProtocol, PendingRoute, Route, Routed};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::access::{ConnectionRecord, Description};
use super::connect::connect_plain;
use super::copy::{copy_bidirectional, Transferred};
use super::double_hbone;
use super::{ProxyError, ProxyInputs};
use crate::hbone::pool::PoolKey;
use crate::socket::{self, Source};

/// Accepts captured connections until the listener fails or the task is dropped.
pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "outbound", &pi, |stream, peer| {
        handle(pi.clone(), stream, peer)
    })
    .await
}

async fn handle(pi: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let original_dst = match socket::original_dst(&client) {
        Ok(dst) => dst,
        Err(e) => return unrouted(&pi, peer, None, ProxyError::OriginalDestination(e)),
    };
    // A just-enrolled pod may connect before its workload's xDS push: wait a moment for it.
    // The setup steps are boxed so the task stays small while the copy runs (`connect.rs`).
    if let Err(miss) = Box::pin(pi.wait_for_local_workload(peer.ip())).await {
        let e = ProxyError::local_miss(miss, peer.ip(), ProxyError::UnknownSource(peer.ip()));
        return unrouted(&pi, peer, Some(original_dst), e);
    }
    let route = match decide(&pi, &client, peer, original_dst) {
        Ok(Routed::Ready(route)) => route,
        Ok(Routed::Lookup(pending)) => match Box::pin(look_up(&pi, pending)).await {
            Ok(route) => route,
            Err(e) => return unrouted(&pi, peer, Some(original_dst), e),
        },
        Err(e) => return unrouted(&pi, peer, Some(original_dst), e),
    };
    let mut record = ConnectionRecord::start(pi.metrics.clone(), route.describe(peer));
    match forward(&pi, &mut client, peer, &route, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

/// Routes the captured connection from `peer` to `original_dst`.
fn decide(
    pi: &ProxyInputs,
    client: &TcpStream,
    peer: SocketAddr,
    original_dst: SocketAddr,
) -> Result<Routed, ProxyError> {
    let local = client
        .local_addr()
        .map_err(ProxyError::OriginalDestination)?;
    if original_dst == socket::canonical(local) {
        // Dialed the capture port directly: there is no original destination to go to.
        return Err(ProxyError::SelfLoop(original_dst));
    }
    route(
        &pi.state.read(),
        &pi.config.network,
        &pi.scope,
        peer.ip(),
        original_dst,
        |n| rand::random_range(0..n),
    )
}

/// Finishes a route to a hostname endpoint once its name is looked up.
async fn look_up(pi: &ProxyInputs, pending: PendingRoute) -> Result<Route, ProxyError> {
    let resolved = pi.lookup.lookup(pending.hostname()).await?;
    pending.finish(&resolved, |n| rand::random_range(0..n))
}

/// Logs a connection that failed before it had a route.
fn unrouted(pi: &ProxyInputs, peer: SocketAddr, original_dst: Option<SocketAddr>, e: ProxyError) {
    let description = Description::unrouted("outbound", peer, original_dst);
    ConnectionRecord::start(pi.metrics.clone(), description)
        .finish(Transferred::default(), Some(&e));
}

type Failed = (Transferred, ProxyError);

fn before_copy(e: impl Into<ProxyError>) -> Failed {
    (Transferred::default(), e.into())
}

/// Executes `route`: connects the upstream from the workload's own address, then copies.
async fn forward(
    pi: &ProxyInputs,
    client: &mut TcpStream,
    peer: SocketAddr,
    route: &Route,
    record: &mut ConnectionRecord,
) -> Result<Transferred, Failed> {
    let transferred = match &route.protocol {
        OutboundProtocol::Tcp => {
            let mut upstream = connect_plain(pi, route.target(), Source::Local(peer.ip()))
                .await
                .map_err(before_copy)?;
            record.opened();
            copy_bidirectional(client, &mut upstream).await
        }
        OutboundProtocol::Hbone {
            tunnel,
            expected_identities,
        } => {
            let key = PoolKey::new(
                route.source.identity(),
                peer.ip(),
                *tunnel,
                expected_identities.clone(),
            );
            let mut stream = Box::pin(pi.pool.open_stream(&key, route.target(), Some(peer.ip())))
                .await
                .map_err(before_copy)?;
            record.opened();
            copy_bidirectional(client, &mut stream).await
        }
        OutboundProtocol::DoubleHbone {
            gateway,
            gateway_identities,
            target,
            final_identities,
        } => {
            let hop = double_hbone::Hop {
                source: route.source.identity(),
                client: peer,
                gateway: *gateway,
                gateway_identities,
                target,
                final_identities,
            };
            let mut stream = Box::pin(double_hbone::open(pi, hop))
                .await
                .map_err(before_copy)?;
            record.opened();
            copy_bidirectional(client, &mut stream).await
        }
    };
    transferred.map_err(|e| (e.transferred, e.into()))
}
