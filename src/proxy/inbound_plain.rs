//! Inbound plaintext (15006): connections from clients outside the mesh, redirected to the
//! tunnel, are delivered to the local workload they were addressed to.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::access::ConnectionRecord;
use super::copy::{copy_bidirectional, Transferred};
use super::outbound::connect_plain;
use super::{ProxyError, ProxyInputs};
use crate::socket;

pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "inbound plaintext", &pi.tasks, |stream, peer| {
        handle(pi.clone(), stream, peer)
    })
    .await
}

async fn handle(pi: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut record = ConnectionRecord::new(pi.metrics.clone(), "inbound", peer);
    match proxy(&pi, &mut client, peer, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

async fn proxy(
    pi: &ProxyInputs,
    client: &mut TcpStream,
    peer: SocketAddr,
    record: &mut ConnectionRecord,
) -> Result<Transferred, (Transferred, ProxyError)> {
    let fail = |e: ProxyError| (Transferred::default(), e);
    let dst = socket::original_dst(client).map_err(|e| fail(ProxyError::OriginalDestination(e)))?;
    record.dst = Some(dst);
    if ProxyInputs::is_own_port(dst) {
        return Err(fail(ProxyError::SelfLoop(dst)));
    }
    let workload = pi
        .local_workload(dst.ip())
        .ok_or_else(|| fail(ProxyError::NotLocal { target: dst }))?;
    record.dst_identity = Some(workload.identity().to_string());
    record.labels = std::mem::take(&mut record.labels).with_destination(Some(&workload));
    let mut upstream = connect_plain(pi, dst, pi.delivery_source(peer.ip()))
        .await
        .map_err(fail)?;
    record.opened();
    copy_bidirectional(client, &mut upstream)
        .await
        .map_err(|e| (e.transferred, e.into()))
}
