//! Inbound plaintext (15006): connections from clients outside the mesh, redirected to the
//! tunnel, are delivered to the local workload they were addressed to.
//!
//! Check the target, authorize, record once, then connect to the app and copy. A refused
//! connection is closed at once.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::access::{base_labels, ConnectionRecord, Description};
use super::connect::connect_plain;
use super::copy::{copy_bidirectional, Transferred};
use super::{InboundTarget, ProxyError, ProxyInputs};
use crate::socket;
use crate::state::Store;

pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "inbound plaintext", &pi.tasks, |stream, peer| {
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
        let description = describe(peer, original_dst, checked.as_ref().ok());
        let record = ConnectionRecord::start(pi.metrics.clone(), description);
        let admitted = checked.and_then(|target| {
            ProxyInputs::authorize(&store, None, peer.ip(), &target)?;
            Ok(target)
        });
        (record, admitted)
    };
    let target = match admitted {
        Ok(target) => target,
        Err(e) => {
            // Closed at once: the client learns nothing beyond the closed connection.
            drop(client);
            record.finish(Transferred::default(), Some(&e));
            return;
        }
    };
    match deliver(&pi, &mut client, peer, &target, &mut record).await {
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
    let workload = pi
        .local_workload_in(store, dst.ip())
        .ok_or(ProxyError::NotLocal { target: dst })?;
    Ok(InboundTarget {
        addr: dst,
        workload,
    })
}

/// The access-log description of a plaintext connection from `src` to `original_dst`,
/// checked into `target` (`None` when the check failed). Nothing about the source is proven.
fn describe(
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
        labels: base_labels("inbound").with_destination(target.map(|t| &*t.workload)),
    }
}

/// Connects to the app (from the client's address where the in-pod rules allow) and copies.
async fn deliver(
    pi: &ProxyInputs,
    client: &mut TcpStream,
    peer: SocketAddr,
    target: &InboundTarget,
    record: &mut ConnectionRecord,
) -> Result<Transferred, (Transferred, ProxyError)> {
    let mut upstream = connect_plain(pi, target.addr, pi.delivery_source(peer.ip()))
        .await
        .map_err(|e| (Transferred::default(), e))?;
    record.opened();
    copy_bidirectional(client, &mut upstream)
        .await
        .map_err(|e| (e.transferred, e.into()))
}
