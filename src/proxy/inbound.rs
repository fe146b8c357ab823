//! Inbound HBONE (15008): terminate mTLS as the workload that was dialed, accept CONNECT
//! streams, and deliver each to that workload — never to an address this tunnel does not serve.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::access::ConnectionRecord;
use super::copy::{copy_bidirectional, Transferred};
use super::outbound::connect_plain;
use super::{ProxyError, ProxyInputs};
use crate::hbone::server::{self, IncomingStream};
use crate::identity::Identity;
use crate::socket;
use crate::tls;

pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    super::accept_loop(listener, "inbound HBONE", &pi.tasks, |stream, peer| {
        let pi = pi.clone();
        async move {
            if let Err(e) = serve_connection(pi, stream, peer).await {
                tracing::warn!(target: "access", direction = "inbound", src = %peer, flag = e.flag(), error = %e, "HBONE connection refused");
            }
        }
    })
    .await
}

/// Who is on the other end of an accepted mTLS connection, and which local address they dialed.
#[derive(Clone)]
struct PeerInfo {
    addr: SocketAddr,
    identity: Identity,
    dialed: IpAddr,
}

async fn serve_connection(
    pi: Arc<ProxyInputs>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), ProxyError> {
    let _ = tcp.set_nodelay(true);
    let local = socket::canonical(tcp.local_addr().map_err(ProxyError::InboundTls)?);
    // Present the identity of the workload whose address was dialed.
    let workload = pi
        .local_workload(local.ip())
        .ok_or(ProxyError::NotLocal { target: local })?;
    let cert = pi.certs.fetch(&workload.identity()).await?;
    let config = tls::server_config(&cert)?;
    let tls_stream = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(ProxyError::InboundTls)?;
    let identity = tls::peer_identity(
        tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default(),
    )
    .map_err(ProxyError::PeerIdentity)?;
    pi.metrics.hbone_connections_accepted.inc();
    let info = PeerInfo {
        addr: peer,
        identity,
        dialed: local.ip(),
    };
    let result = server::serve(
        tls_stream,
        |incoming| {
            pi.tasks
                .wrap(handle_stream(pi.clone(), info.clone(), incoming))
        },
        pi.tasks.draining(),
    )
    .await;
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "HBONE connection ended with an error");
    }
    Ok(())
}

async fn handle_stream(pi: Arc<ProxyInputs>, peer: PeerInfo, incoming: IncomingStream) {
    let mut record = ConnectionRecord::new(pi.metrics.clone(), "inbound", peer.addr);
    record.protocol = "HBONE";
    record.src_identity = Some(peer.identity.to_string());
    record.labels.connection_security_policy = "mutual_tls";
    // Name the source workload only when the peer's address and proven identity agree.
    let source = pi
        .state
        .read()
        .workload_by_ip(&pi.config.network, peer.addr.ip())
        .filter(|w| w.identity() == peer.identity);
    record.labels = std::mem::take(&mut record.labels).with_source(source.as_deref());
    record.labels.source_principal = peer.identity.to_string();
    record.labels.source_workload_namespace = peer.identity.namespace.clone();
    match proxy_stream(&pi, &peer, incoming, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

async fn proxy_stream(
    pi: &ProxyInputs,
    peer: &PeerInfo,
    incoming: IncomingStream,
    record: &mut ConnectionRecord,
) -> Result<Transferred, (Transferred, ProxyError)> {
    let checked = check_target(pi, peer, &incoming);
    let (target, workload) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            incoming.refuse(e.status());
            return Err((Transferred::default(), e));
        }
    };
    record.dst = Some(target);
    record.dst_identity = Some(workload.identity().to_string());
    record.labels = std::mem::take(&mut record.labels).with_destination(Some(&workload));
    let mut upstream = match connect_plain(pi, target, pi.delivery_source(peer.addr.ip())).await {
        Ok(up) => up,
        Err(e) => {
            incoming.refuse(e.status());
            return Err((Transferred::default(), e));
        }
    };
    let mut stream = incoming.accept().map_err(|e| {
        (
            Transferred::default(),
            ProxyError::Hbone(crate::hbone::client::ClientError::Stream {
                authority: target,
                source: e,
            }),
        )
    })?;
    record.opened();
    // a→b is what the client sent: from the HBONE stream to the workload.
    copy_bidirectional(&mut stream, &mut upstream)
        .await
        .map_err(|e| (e.transferred, e.into()))
}

fn check_target(
    pi: &ProxyInputs,
    peer: &PeerInfo,
    incoming: &IncomingStream,
) -> Result<(SocketAddr, Arc<crate::state::Workload>), ProxyError> {
    let target = incoming.target()?;
    if ProxyInputs::is_own_port(target) {
        return Err(ProxyError::NotLocal { target });
    }
    let workload = pi
        .local_workload(target.ip())
        .ok_or(ProxyError::NotLocal { target })?;
    if target.ip() != peer.dialed && !workload.workload_ips.contains(&peer.dialed) {
        // The TLS session proved the identity of the dialed workload, not of this one.
        return Err(ProxyError::TargetMismatch {
            target,
            dialed: peer.dialed,
        });
    }
    Ok((target, workload))
}
