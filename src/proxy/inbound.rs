//! Inbound HBONE (15008): terminate mTLS as the workload that was dialed, accept CONNECT
//! streams, and deliver each to that workload — never to an address this tunnel does not serve.
//!
//! Per stream: check the target, authorize, record once, then connect to the app and copy. A
//! refused stream gets its HTTP status; the HTTP/2 connection keeps serving other streams.

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::access::{base_labels, inbound_service, ConnectionRecord, Description};
use super::connect::connect_plain;
use super::copy::{copy_bidirectional_until, CopyError, Ended, Transferred};
use super::live::Registration;
use super::waypoint_guard::check_from_waypoint;
use super::{InboundTarget, ProxyError, ProxyInputs};
use crate::hbone::server::{self, ConnectTarget, IncomingStream};
use crate::identity::Identity;
use crate::metrics::GaugeGuard;
use crate::socket;
use crate::state::Store;
use crate::tls;

/// Accepts HBONE connections within the process's caps (`proxy/admission.rs`: a connection
/// over one is closed at once, before any TLS work) and serves each on its own task.
pub async fn run(pi: Arc<ProxyInputs>, listener: TcpListener) {
    nodetunnel_base::accept::serve(listener, "inbound HBONE", |stream, peer| {
        let peer = socket::canonical(peer);
        let Ok(place) = pi.inbound_limits.admit(peer.ip()) else {
            // Dropped unanswered: the refusal was logged (rate-limited) by `admit`.
            return;
        };
        pi.keep_alive(&stream);
        let pi2 = pi.clone();
        pi.tasks.spawn(async move {
            let _place = place;
            match serve_connection(pi2, stream, peer).await {
                Ok(()) => {}
                // Silent or slow clients are reaped here by the thousand under a flood: not
                // one warning each.
                Err(e @ ProxyError::InboundHandshakeTimeout(_)) => {
                    tracing::debug!(target: "access", direction = "inbound", src = %peer, flag = e.flag(), error = %e, "HBONE connection closed");
                }
                Err(e) => tracing::warn!(target: "access", direction = "inbound", src = %peer, flag = e.flag(), error = %e, "HBONE connection refused"),
            }
        });
    })
    .await
}

/// Who is on the other end of an accepted mTLS connection, and which local address they dialed.
#[derive(Clone)]
pub(super) struct PeerInfo {
    pub(super) addr: SocketAddr,
    pub(super) identity: Identity,
    pub(super) dialed: IpAddr,
}

async fn serve_connection(
    pi: Arc<ProxyInputs>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), ProxyError> {
    // One deadline from accept to an established HTTP/2 connection: a peer that connects and
    // stays silent, or stalls its TLS or HTTP/2 handshake, holds its descriptor this long.
    let handshake_deadline = tokio::time::Instant::now() + pi.config.hbone.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    let local = socket::canonical(tcp.local_addr().map_err(ProxyError::InboundTls)?);
    // Present the identity of the workload whose address was dialed (waiting a moment for a
    // just-enrolled pod's workload, whose peers may know it before we do).
    let workload = pi
        .wait_for_local_workload(local.ip())
        .await
        .map_err(|miss| {
            ProxyError::local_miss(miss, local.ip(), ProxyError::NotLocal { target: local })
        })?;
    let cert = pi.certs.fetch(&workload.identity()).await?;
    let config = tls::server_config(&cert)?;
    let tls_stream =
        tokio::time::timeout_at(handshake_deadline, TlsAcceptor::from(config).accept(tcp))
            .await
            .map_err(|_| ProxyError::InboundHandshakeTimeout(pi.config.hbone.handshake_timeout))?
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
    let _open = GaugeGuard::hold(&pi.metrics.hbone_inbound_connections);
    // Shared by the connection's streams (one copy of the identity, not one per stream).
    let info = Arc::new(PeerInfo {
        addr: peer,
        identity,
        dialed: local.ip(),
    });
    let result = server::serve(
        tls_stream,
        |incoming| {
            pi.tasks
                .wrap(handle_stream(pi.clone(), info.clone(), incoming))
        },
        pi.tasks.draining(),
        server::ServeOptions {
            handshake_deadline,
            idle_timeout: pi.config.hbone.idle_timeout,
            ping: pi.config.hbone.ping,
        },
    )
    .await;
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "HBONE connection ended with an error");
    }
    Ok(())
}

async fn handle_stream(pi: Arc<ProxyInputs>, peer: Arc<PeerInfo>, incoming: IncomingStream) {
    if pi.config.east_west_gateway {
        // A network gateway forwards service-named targets (double HBONE) unread.
        if let Ok(ConnectTarget::Hostname { host, port }) = incoming.target() {
            return super::gateway::forward(pi, peer, incoming, host, port).await;
        }
    }
    // The synchronous part is its own function: locals of an async fn that are moved on
    // before an await still take space in its future, which lives as long as the stream.
    let (mut record, admitted) = admit_stream(&pi, &peer, &incoming);
    let (target, live) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            incoming.refuse(e.status());
            record.finish(Transferred::default(), Some(&e));
            return;
        }
    };
    match deliver(&pi, &peer, incoming, target, live, &mut record).await {
        Ok(moved) => record.finish(moved, None),
        Err((moved, e)) => record.finish(moved, Some(&e)),
    }
}

/// Checks, describes and authorizes a stream on one snapshot of the state (released before
/// the caller awaits anything): its record, and where it goes with its live registration.
fn admit_stream(
    pi: &ProxyInputs,
    peer: &PeerInfo,
    incoming: &IncomingStream,
) -> (
    ConnectionRecord,
    Result<(InboundTarget, Registration), ProxyError>,
) {
    let requested = incoming.target();
    let requested_addr = requested.as_ref().ok().and_then(ConnectTarget::addr);
    let store = pi.state.read();
    let target = requested
        .map_err(ProxyError::from)
        .and_then(|requested| check_target(pi, &store, peer, requested));
    let description = describe(pi, &store, peer, requested_addr, target.as_ref().ok());
    let record = ConnectionRecord::start(pi.metrics.clone(), description);
    let admitted = target.and_then(|target| {
        check_from_waypoint(&store, &target, Some(&peer.identity), peer.addr.ip())?;
        let source = Some(peer.identity.clone());
        let live = pi.authorize(&store, source, peer.addr.ip(), &target)?;
        Ok((target, live))
    });
    (record, admitted)
}

/// The access-log description of a stream from `peer` that asked for `requested`, checked
/// into `target` (`None` when the check failed).
fn describe(
    pi: &ProxyInputs,
    store: &Store,
    peer: &PeerInfo,
    requested: Option<SocketAddr>,
    target: Option<&InboundTarget>,
) -> Description {
    // Name the source workload only when the peer's address and proven identity agree.
    let source = store
        .workload_by_ip(&pi.config.network, peer.addr.ip())
        .filter(|w| w.identity() == peer.identity);
    let service = target.and_then(|t| inbound_service(store, &t.workload, t.addr.port()));
    let mut labels = base_labels("inbound")
        .with_source(source.as_deref())
        .with_destination(target.map(|t| &*t.workload))
        .with_destination_service(service.as_deref());
    labels.source_principal = peer.identity.to_string();
    labels.source_workload_namespace = peer.identity.namespace.clone();
    labels.connection_security_policy = "mutual_tls";
    Description {
        direction: "inbound",
        src: peer.addr,
        original_dst: requested,
        dst: target.map(|t| t.addr),
        src_identity: Some(peer.identity.clone()),
        dst_identity: target.map(|t| t.workload.identity()),
        protocol: "HBONE",
        labels,
        waypoint: None,
        hbone_target: None,
        network_gateway: None,
        opaque: false,
    }
}

type Failed = (Transferred, ProxyError);

/// Connects to the app, answers the stream 200, and copies. A failed connect refuses the
/// stream with that error's status. If a state change revokes the stream meanwhile (`live`),
/// it ends at once: refused (401) if not yet answered, otherwise reset, and the app's
/// connection aborted.
async fn deliver(
    pi: &ProxyInputs,
    peer: &PeerInfo,
    incoming: IncomingStream,
    target: InboundTarget,
    live: Registration,
    record: &mut ConnectionRecord,
) -> Result<Transferred, Failed> {
    let source = pi.delivery_source(peer.addr.ip());
    splice(pi, incoming, target.addr, source, live, record, |_| false).await
}

/// Connects to `addr` from `source` (given up if the policy is revoked meanwhile), answers the
/// stream, and copies both ways until both ends finish or the policy is revoked: then only
/// this stream is reset (the HTTP/2 connection keeps carrying the peer's others) and the
/// upstream connection aborted. A copy failure `clean_end` accepts counts as a clean end
/// (the gateway's relay, `gateway.rs`, has one). The inbound delivery and the gateway's
/// relay both end HBONE streams here.
pub(super) async fn splice(
    pi: &ProxyInputs,
    incoming: IncomingStream,
    addr: SocketAddr,
    source: socket::Source,
    mut live: Registration,
    record: &mut ConnectionRecord,
    clean_end: impl Fn(&CopyError) -> bool,
) -> Result<Transferred, Failed> {
    let mut revoked = pin!(live.revoked());
    let connect = connect_plain(pi, addr, source);
    let connected = tokio::select! {
        biased;
        reason = &mut revoked => Err(ProxyError::PolicyRevoked(reason)),
        connected = connect => connected,
    };
    let mut upstream = match connected {
        Ok(up) => up,
        Err(e) => {
            incoming.refuse(e.status());
            return Err((Transferred::default(), e));
        }
    };
    let mut stream = match incoming.accept() {
        Ok(stream) => stream,
        Err(source) => {
            let e = ProxyError::InboundStream {
                target: addr,
                source,
            };
            return Err((Transferred::default(), e));
        }
    };
    record.opened();
    // a→b is what the client sent: from the HBONE stream to the upstream.
    match copy_bidirectional_until(&mut stream, &mut upstream, revoked).await {
        Ended::Done(moved) => Ok(moved),
        Ended::Failed(e) if clean_end(&e) => Ok(e.transferred),
        Ended::Failed(e) => Err((e.transferred, e.into())),
        Ended::Stopped(reason, moved) => {
            stream.reset(h2::Reason::CANCEL);
            let _ = socket::reset_on_close(&upstream);
            Err((moved, ProxyError::PolicyRevoked(reason)))
        }
    }
}

/// The CONNECT target, if it is a workload this tunnel serves and the one the TLS session was
/// made for. A target named by service hostname (`hostname:port`, from waypoints and newer
/// peers) is delivered to the dialed workload, on the port that service maps the service port
/// to for it (as ztunnel does).
fn check_target(
    pi: &ProxyInputs,
    store: &Store,
    peer: &PeerInfo,
    requested: ConnectTarget,
) -> Result<InboundTarget, ProxyError> {
    let target = match requested {
        ConnectTarget::Addr(addr) => addr,
        ConnectTarget::Hostname { host, port } => {
            let workload = pi.local_workload_in(store, peer.dialed).map_err(|miss| {
                let target = SocketAddr::new(peer.dialed, port);
                ProxyError::local_miss(miss, peer.dialed, ProxyError::NotLocal { target })
            })?;
            SocketAddr::new(
                peer.dialed,
                hostname_target_port(store, &workload, &host, port)?,
            )
        }
    };
    if pi.is_own_port(target) {
        // On the workload's address or any other: a stream into the tunnel itself would be a
        // second layer of HBONE, or the admin and metrics endpoints reached from the mesh.
        return Err(ProxyError::SelfLoop(target));
    }
    let workload = pi.local_workload_in(store, target.ip()).map_err(|miss| {
        ProxyError::local_miss(miss, target.ip(), ProxyError::NotLocal { target })
    })?;
    if target.ip() != peer.dialed && !workload.workload_ips.contains(&peer.dialed) {
        // The TLS session proved the identity of the dialed workload, not of this one.
        return Err(ProxyError::TargetMismatch {
            target,
            dialed: peer.dialed,
        });
    }
    Ok(InboundTarget {
        addr: target,
        workload,
    })
}

/// The port a CONNECT to service `host`:`service_port` reaches on `workload`: the workload's
/// own mapping for that service, else the service's target port; a service port the service
/// does not map to a number is refused (there is no port to deliver to).
fn hostname_target_port(
    store: &Store,
    workload: &crate::state::Workload,
    host: &str,
    service_port: u16,
) -> Result<u16, ProxyError> {
    let unknown = || ProxyError::UnknownHostname {
        hostname: format!("{host}:{service_port}"),
    };
    let service = store
        .service_by_hostname(host, &workload.namespace)
        .ok_or_else(unknown)?;
    let own = workload
        .services
        .get(&service.key())
        .and_then(|ports| ports.get(&service_port))
        .copied()
        .filter(|p| *p != 0);
    let default = service
        .ports
        .get(&service_port)
        .copied()
        .filter(|p| *p != 0);
    own.or(default).ok_or_else(unknown)
}
