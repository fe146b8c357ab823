//! Outbound capture (15001): a workload's redirected connection is resolved to its real
//! destination and carried there over HBONE, or passed through as plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::access::ConnectionRecord;
use super::copy::{copy_bidirectional, Transferred};
use super::{ProxyError, ProxyInputs};
use crate::config::HBONE_PORT;
use crate::hbone::client;
use crate::hbone::pool::PoolKey;
use crate::socket::{self, Source};
use crate::state::Upstream;
use crate::tls;

/// Accepts captured connections until the listener fails or the task is dropped.
pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "outbound", &pi.tasks, |stream, peer| {
        handle(pi.clone(), stream, peer)
    })
    .await
}

async fn handle(pi: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut record = ConnectionRecord::new(pi.metrics.clone(), "outbound", peer);
    match proxy(&pi, &mut client, peer, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

type Failed = (Transferred, ProxyError);

fn before_copy(e: impl Into<ProxyError>) -> Failed {
    (Transferred::default(), e.into())
}

async fn proxy(
    pi: &ProxyInputs,
    client: &mut TcpStream,
    peer: SocketAddr,
    record: &mut ConnectionRecord,
) -> Result<Transferred, Failed> {
    let dst = socket::original_dst(client)
        .map_err(|e| before_copy(ProxyError::OriginalDestination(e)))?;
    record.dst = Some(dst);
    if dst
        == socket::canonical(
            client
                .local_addr()
                .map_err(|e| before_copy(ProxyError::OriginalDestination(e)))?,
        )
    {
        // Dialed the capture port directly: there is no original destination to go to.
        return Err(before_copy(ProxyError::SelfLoop(dst)));
    }
    let source = pi
        .local_workload(peer.ip())
        .ok_or_else(|| before_copy(ProxyError::UnknownSource(peer.ip())))?;
    let source_identity = source.identity();
    record.src_identity = Some(source_identity.to_string());
    record.labels = std::mem::take(&mut record.labels).with_source(Some(&source));

    let upstream = pi
        .state
        .read()
        .resolve(&pi.config.network, dst, |n| rand::random_range(0..n))
        .map_err(before_copy)?;
    if let Upstream::Workload {
        workload, service, ..
    } = &upstream
    {
        record.labels = std::mem::take(&mut record.labels).with_destination(Some(workload));
        if let Some(service) = service {
            record.labels.destination_service = service.hostname.clone();
        }
    }
    let target = upstream.target();
    record.dst = Some(target);

    if !upstream.uses_hbone() {
        let mut up = connect_plain(pi, target, Source::Local(peer.ip()))
            .await
            .map_err(before_copy)?;
        record.opened();
        return copy_bidirectional(client, &mut up)
            .await
            .map_err(|e| (e.transferred, e.into()));
    }

    let expected = upstream.expected_identities();
    record.dst_identity = expected.first().map(|i| i.to_string());
    record.protocol = "HBONE";
    record.labels.connection_security_policy = "mutual_tls";
    let tunnel_addr = SocketAddr::new(target.ip(), HBONE_PORT);
    let key = PoolKey::new(
        source_identity.clone(),
        peer.ip(),
        tunnel_addr,
        expected.clone(),
    );
    let connect = || async {
        let cert = pi.certs.fetch(&source_identity).await?;
        let tls_config = tls::client_config(&cert, expected)?;
        let tcp = connect_plain(pi, tunnel_addr, Source::Local(peer.ip())).await?;
        let connection = tokio::time::timeout(
            pi.config.connect_timeout,
            client::handshake(tcp, tls_config),
        )
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(tunnel_addr))??;
        pi.metrics.hbone_connections_opened.inc();
        Ok::<_, ProxyError>(connection)
    };
    let mut stream = pi
        .pool
        .open_stream(&key, target, Some(peer.ip()), connect)
        .await
        .map_err(before_copy)?;
    record.opened();
    copy_bidirectional(client, &mut stream)
        .await
        .map_err(|e| (e.transferred, e.into()))
}

/// A plain TCP connection from the tunnel (marked, so capture rules let it pass).
pub(super) async fn connect_plain(
    pi: &ProxyInputs,
    addr: SocketAddr,
    source: Source,
) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(pi.config.connect_timeout, pi.sockets.connect(addr, source)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ProxyError::Upstream { addr, source }),
        Err(_) => Err(ProxyError::UpstreamTimeout(addr)),
    }
}
