//! The east-west gateway receiver (`EAST_WEST_GATEWAY=true`): double HBONE's outer layer
//! ends here, the inner one passes through unread.
//!
//! A client on another network sends the outer CONNECT to a gateway workload this tunnel
//! serves, naming the destination service as `hostname:port`. The gateway authorizes the
//! stream as one to the gateway workload (its policies apply to the client's identity, the
//! only one it can see), picks a healthy HBONE endpoint of that service on its own network
//! (`Store::gateway_forward_endpoint`, the service's load balancing), connects to that
//! endpoint's tunnel (15008), answers 200 and copies bytes both ways. What it copies is the
//! client's inner TLS session: the gateway holds no key for it and never reads it, so the
//! identity the destination's tunnel verifies is the client's own.

use std::net::SocketAddr;
use std::sync::Arc;

use super::access::{base_labels, ConnectionRecord, Description};
use super::copy::{CopyError, Direction, Transferred};
use super::inbound::{splice, PeerInfo};
use super::live::Registration;
use super::{InboundTarget, ProxyError, ProxyInputs};
use crate::config::HBONE_PORT;
use crate::hbone::server::IncomingStream;
use crate::socket::Source;

/// Where one forwarded stream goes, decided on one snapshot of the state.
struct Forward {
    endpoint: SocketAddr,
    live: Registration,
}

/// Forwards the stream `incoming` (CONNECT to `host`:`port`) from `peer` to an endpoint's
/// tunnel on this network, or refuses it with the reason.
pub(super) async fn forward(
    pi: Arc<ProxyInputs>,
    peer: Arc<PeerInfo>,
    incoming: IncomingStream,
    host: String,
    port: u16,
) {
    let (mut record, decided) = decide(&pi, &peer, &host, port);
    let forward = match decided {
        Ok(forward) => forward,
        Err(e) => {
            incoming.refuse(e.status());
            record.finish(Transferred::default(), Some(&e));
            return;
        }
    };
    match relay(&pi, incoming, forward, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

/// Checks, describes and authorizes on one snapshot (released before anything is awaited).
fn decide(
    pi: &ProxyInputs,
    peer: &PeerInfo,
    host: &str,
    port: u16,
) -> (ConnectionRecord, Result<Forward, ProxyError>) {
    let target = format!("{host}:{port}");
    let store = pi.state.read();
    let gateway = pi.local_workload_in(&store, peer.dialed).map_err(|miss| {
        let at = SocketAddr::new(peer.dialed, HBONE_PORT);
        ProxyError::local_miss(miss, peer.dialed, ProxyError::NotLocal { target: at })
    });
    let chosen = gateway.as_ref().map_err(clone_miss).and_then(|gw| {
        store
            .gateway_forward_endpoint(&pi.config.network, &gw.namespace, host, port, |n| {
                rand::random_range(0..n)
            })
            .map_err(|source| ProxyError::GatewayForward {
                target: target.clone(),
                source: Box::new(source),
            })
    });
    let mut labels = base_labels("inbound");
    if let Ok((workload, service, _)) = &chosen {
        labels = labels
            .with_destination(Some(workload))
            .with_destination_service(Some(service));
    }
    labels.source_principal = peer.identity.to_string();
    labels.source_workload_namespace = peer.identity.namespace.clone();
    labels.connection_security_policy = "mutual_tls";
    let description = Description {
        direction: "inbound",
        src: peer.addr,
        original_dst: None,
        dst: chosen.as_ref().ok().map(|(_, _, addr)| *addr),
        src_identity: Some(peer.identity.clone()),
        // The inner TLS is the destination's to verify; the gateway proves nothing about it.
        dst_identity: None,
        protocol: "HBONE",
        labels,
        waypoint: None,
        hbone_target: Some(target.as_str().into()),
        network_gateway: None,
        opaque: true,
    };
    let record = ConnectionRecord::start(pi.metrics.clone(), description);
    let decided = gateway.and_then(|gw| {
        let (_, _, endpoint) = chosen?;
        if pi.local_workload_in(&store, endpoint.ip()).is_ok() {
            // An endpoint this tunnel serves itself (the gateway): forwarding would loop.
            return Err(ProxyError::SelfLoop(endpoint));
        }
        let as_target = InboundTarget {
            addr: SocketAddr::new(peer.dialed, HBONE_PORT),
            workload: gw,
        };
        let live = pi.authorize(
            &store,
            Some(peer.identity.clone()),
            peer.addr.ip(),
            &as_target,
        )?;
        Ok(Forward { endpoint, live })
    });
    (record, decided)
}

/// The lookup's error again, for the branch that only needs to know it failed (the original
/// is kept for the outcome).
fn clone_miss(e: &ProxyError) -> ProxyError {
    match e {
        ProxyError::AmbiguousLocal { ip, uids } => ProxyError::AmbiguousLocal {
            ip: *ip,
            uids: uids.clone(),
        },
        _ => ProxyError::NotLocal {
            target: SocketAddr::new([0, 0, 0, 0].into(), HBONE_PORT),
        },
    }
}

type Failed = (Transferred, ProxyError);

/// Connects to the endpoint's tunnel from the gateway's own address, answers 200, copies.
/// A revocation of the stream (a policy change on the gateway workload) ends it as inbound
/// delivery does.
async fn relay(
    pi: &ProxyInputs,
    incoming: IncomingStream,
    forward: Forward,
    record: &mut ConnectionRecord,
) -> Result<Transferred, Failed> {
    let Forward { endpoint, live } = forward;
    // The client finished after the destination's tunnel had closed its socket (its inner TLS
    // session was over): passing the FIN on fails with ENOTCONN, which only the socket
    // shutdown reports. Everything was delivered; nothing was cut.
    let fin_after_close = |e: &CopyError| {
        e.direction == Direction::AToB && e.source.kind() == std::io::ErrorKind::NotConnected
    };
    splice(
        pi,
        incoming,
        endpoint,
        Source::Any,
        live,
        record,
        fin_after_close,
    )
    .await
}
