//! Inbound plaintext (15006): connections from clients outside the mesh, redirected to the
//! tunnel, are delivered to the local workload they were addressed to.
//!
//! Check the target, authorize, record once, then connect to the app and copy. A refused
//! connection is closed at once.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::access::{base_labels, inbound_service, ConnectionRecord, Description};
use super::connect::connect_plain;
use super::copy::{copy_bidirectional_until, Ended, Transferred};
use super::live::Registration;
use super::waypoint_guard::check_from_waypoint;
use super::{InboundTarget, ProxyError, ProxyInputs};
use crate::socket;
use crate::state::Store;

pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "inbound plaintext", &pi, |stream, peer| {
        handle(pi.clone(), stream, peer)
    })
    .await
}

async fn handle(pi: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let original_dst = socket::original_dst(&client);
    // Check and authorize on one snapshot of the state, released before any await.
    let (mut record, admitted) = {
        let store = pi.state.read();
        let (original_dst, checked) = match original_dst {
            Ok(dst) => (Some(dst), check_target(&pi, &store, dst)),
            Err(e) => (None, Err(ProxyError::OriginalDestination(e))),
        };
        let description = describe(&store, peer, original_dst, checked.as_ref().ok());
        let record = ConnectionRecord::start(pi.metrics.clone(), description);
        let admitted = checked.and_then(|target| {
            check_from_waypoint(&store, &target, None, peer.ip())?;
            let live = pi.authorize(&store, None, peer.ip(), &target)?;
            Ok((target, live))
        });
        (record, admitted)
    };
    let (target, live) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // Closed at once: the client learns nothing beyond the closed connection.
            drop(client);
            record.finish(Transferred::default(), Some(&e));
            return;
        }
    };
    match deliver(&pi, &mut client, peer, &target, live, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

/// The original destination, if it is a workload this tunnel serves (and not the tunnel).
fn check_target(
    pi: &ProxyInputs,
    store: &Store,
    dst: SocketAddr,
) -> Result<InboundTarget, ProxyError> {
    if pi.is_own_port(dst) {
        return Err(ProxyError::SelfLoop(dst));
    }
    let workload = pi.local_workload_in(store, dst.ip()).map_err(|miss| {
        ProxyError::local_miss(miss, dst.ip(), ProxyError::NotLocal { target: dst })
    })?;
    Ok(InboundTarget {
        addr: dst,
        workload,
    })
}

/// The access-log description of a plaintext connection from `src` to `original_dst`,
/// checked into `target` (`None` when the check failed). Nothing about the source is proven.
fn describe(
    store: &Store,
    src: SocketAddr,
    original_dst: Option<SocketAddr>,
    target: Option<&InboundTarget>,
) -> Description {
    Description {
        direction: "inbound",
        src,
        original_dst,
        dst: target.map(|t| t.addr),
        src_identity: None,
        dst_identity: target.map(|t| t.workload.identity()),
        protocol: "TCP",
        labels: base_labels("inbound")
            .with_destination(target.map(|t| &*t.workload))
            .with_destination_service(
                target
                    .and_then(|t| inbound_service(store, &t.workload, t.addr.port()))
                    .as_deref(),
            ),
        waypoint: None,
        hbone_target: None,
        network_gateway: None,
        opaque: false,
    }
}

/// Connects to the app (from the client's address where the in-pod rules allow) and copies.
/// If a state change revokes the connection meanwhile (`live`), both sides are aborted (RST)
/// at once.
async fn deliver(
    pi: &ProxyInputs,
    client: &mut TcpStream,
    peer: SocketAddr,
    target: &InboundTarget,
    mut live: Registration,
    record: &mut ConnectionRecord,
) -> Result<Transferred, (Transferred, ProxyError)> {
    let mut revoked = pin!(live.revoked());
    let connect = connect_plain(pi, target.addr, pi.delivery_source(peer.ip()));
    let connected = tokio::select! {
        biased;
        reason = &mut revoked => Err(ProxyError::PolicyRevoked(reason)),
        connected = connect => connected,
    };
    let mut upstream = match connected {
        Ok(up) => up,
        Err(e) => {
            if matches!(e, ProxyError::PolicyRevoked(_)) {
                let _ = socket::reset_on_close(client);
            }
            return Err((Transferred::default(), e));
        }
    };
    record.opened();
    match copy_bidirectional_until(client, &mut upstream, revoked).await {
        Ended::Done(moved) => Ok(moved),
        Ended::Failed(e) => Err((e.transferred, e.into())),
        Ended::Stopped(reason, moved) => {
            let _ = socket::reset_on_close(client);
            let _ = socket::reset_on_close(&upstream);
            Err((moved, ProxyError::PolicyRevoked(reason)))
        }
    }
}
