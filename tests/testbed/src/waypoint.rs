//! A waypoint stand-in (no Envoy here): an HBONE server that terminates mTLS with a mesh
//! certificate for the waypoint's identity, records each CONNECT (its `:authority` and the
//! peer's proven identity), and forwards the stream over a new HBONE connection of its own —
//! presenting the waypoint's identity, from the waypoint's address — to the destination's
//! tunnel, as a real waypoint forwards after its L7 processing.
//!
//! ```text
//! let wp = WaypointStandIn::start(topo.ns("n2"), (addr::NON_MESH, 15088).into(), cert,
//!                                 ca.roots(), |target| Some(((addr::SERVER, 15008).into(),
//!                                 (addr::SERVER, 8080).into())))?;
//! ... traffic ...
//! assert_eq!(wp.hops()[0].peer_identity, spiffe_id("default", "client"));
//! ```
//!
//! Where a CONNECT target goes is the test's decision (`route`): the stand-in reads no mesh
//! state. Its own outgoing sockets carry the tunnel mark (0x539) so the node's capture rules,
//! which would send them to that node's tunnel, let them pass as a waypoint pod's would be.
//! Everything runs on one thread inside the node namespace, on a runtime of its own.

use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::oneshot;

use crate::inpod::rules::TUNNEL_SOCKET_MARK;
use crate::netns::Netns;
use crate::raw_hbone::verify;
use crate::raw_hbone::{ClientCert, RawHboneError};

/// One CONNECT the stand-in received, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The `:authority` the client's tunnel asked for.
    pub target: String,
    /// The SPIFFE URI the client's tunnel proved.
    pub peer_identity: String,
    /// Where it was forwarded (`None` when `route` had no answer: refused with 503).
    pub forwarded_to: Option<SocketAddr>,
    /// The SPIFFE URI the destination's tunnel proved.
    pub upstream_identity: Option<String>,
    /// The destination tunnel's answer to the forwarded CONNECT (or why there was none).
    pub upstream_status: Result<u16, String>,
}

/// Where a CONNECT target is forwarded: `(tunnel address, CONNECT target there)`.
pub type Route = dyn Fn(SocketAddr) -> Option<(SocketAddr, SocketAddr)> + Send + Sync;

/// A running stand-in; stopped on drop.
pub struct WaypointStandIn {
    hops: Arc<Mutex<Vec<Hop>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

struct Shared {
    own_ip: Ipv4Addr,
    client: Arc<rustls::ClientConfig>,
    route: Box<Route>,
    hops: Arc<Mutex<Vec<Hop>>>,
}

impl WaypointStandIn {
    /// Listens on `listen` (an address of a pod in `ns`) presenting `cert`, accepting peers
    /// whose certificates chain to `roots` (and trusting the same roots upstream).
    pub fn start(
        ns: &Netns,
        listen: SocketAddrV4,
        cert: ClientCert,
        roots: &[CertificateDer<'static>],
        route: impl Fn(SocketAddr) -> Option<(SocketAddr, SocketAddr)> + Send + Sync + 'static,
    ) -> Result<WaypointStandIn, RawHboneError> {
        let server_config = server_config(&cert, roots)?;
        let client = verify::client_config(&cert, roots)?;
        let hops = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            own_ip: *listen.ip(),
            client,
            route: Box::new(route),
            hops: hops.clone(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = ns.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(RawHboneError::Runtime(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(source) => {
                        let _ = ready_tx.send(Err(RawHboneError::Tcp {
                            src: *listen.ip(),
                            dst: listen.into(),
                            source,
                        }));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept_loop(listener, acceptor, shared) => {}
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(RawHboneError::StreamEnded {
                    what: format!("waypoint stand-in on {listen}"),
                    reason: "its thread ended before listening".into(),
                })
            }
        }
        Ok(WaypointStandIn {
            hops,
            stop: Some(stop_tx),
            thread: Some(thread),
            addr: listen.into(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every CONNECT received so far, in order.
    pub fn hops(&self) -> Vec<Hop> {
        self.hops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WaypointStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// TLS 1.3, ALPN h2, a client certificate chaining to `roots` required.
fn server_config(
    cert: &ClientCert,
    roots: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, RawHboneError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| RawHboneError::Pki {
            what: "client verifier".into(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    while let Ok((tcp, peer)) = listener.accept().await {
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, acceptor, shared).await {
                tracing::debug!(%peer, error = %e, "waypoint stand-in connection ended");
            }
        });
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let peer_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "no client certificate".to_string())
        .and_then(|leaf| verify::spiffe_uri(leaf))?;
    let mut conn = h2::server::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(request) = conn.accept().await {
        let (request, respond) = request.map_err(|e| e.to_string())?;
        let (shared, peer_identity) = (shared.clone(), peer_identity.clone());
        tokio::spawn(forward(request, respond, peer_identity, shared));
    }
    Ok(())
}

/// Records the CONNECT, forwards it, answers with the upstream's status, then copies.
async fn forward(
    request: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer_identity: String,
    shared: Arc<Shared>,
) {
    let target = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut hop = Hop {
        target: target.clone(),
        peer_identity,
        forwarded_to: None,
        upstream_identity: None,
        upstream_status: Err("not forwarded".into()),
    };
    let route = (request.method() == Method::CONNECT)
        .then(|| target.parse::<SocketAddr>().ok())
        .flatten()
        .and_then(|t| (shared.route)(t));
    let upstream = match route {
        Some((tunnel, upstream_target)) => {
            hop.forwarded_to = Some(tunnel);
            open_upstream(&shared, tunnel, upstream_target).await
        }
        None => Err("no route".into()),
    };
    let (status, streams) = match upstream {
        Ok((identity, status, streams)) => {
            hop.upstream_identity = Some(identity);
            hop.upstream_status = Ok(status.as_u16());
            (status, streams)
        }
        Err(reason) => {
            hop.upstream_status = Err(reason);
            (StatusCode::SERVICE_UNAVAILABLE, None)
        }
    };
    shared
        .hops
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(hop);
    let response = Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    let Ok(down_send) = respond.send_response(response, streams.is_none()) else {
        return;
    };
    let Some((up_send, up_recv)) = streams else {
        return;
    };
    let down_recv = request.into_body();
    tokio::join!(pump(down_recv, up_send), pump(up_recv, down_send));
}

type Upstream = (String, StatusCode, Option<(SendStream<Bytes>, RecvStream)>);

/// HBONE to `tunnel` from the waypoint's own address: the tunnel's identity, its answer to
/// CONNECT `target`, and the open stream when it is 200.
async fn open_upstream(
    shared: &Shared,
    tunnel: SocketAddr,
    target: SocketAddr,
) -> Result<Upstream, String> {
    let tcp = marked_connect(shared.own_ip, tunnel).map_err(|e| format!("TCP {tunnel}: {e}"))?;
    let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(tunnel.ip().into());
    let tls = tokio_rustls::TlsConnector::from(shared.client.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {tunnel}: {e}"))?;
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "no server certificate".to_string())
        .and_then(|leaf| verify::spiffe_uri(leaf))?;
    let (send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2 with {tunnel}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, up_send) = send
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let status = response.status();
    let streams = (status == StatusCode::OK).then(|| (up_send, response.into_body()));
    Ok((identity, status, streams))
}

/// A nonblocking TCP connection from `src` to `dst` carrying the tunnel mark.
fn marked_connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other(
            "only IPv4 destinations are supported",
        ));
    };
    let fd: OwnedFd = sock::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sock::setsockopt(&fd, sockopt::Mark, &TUNNEL_SOCKET_MARK)?;
    sock::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    sock::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Copies one direction between two HTTP/2 streams until the sender ends it.
async fn pump(mut recv: RecvStream, mut send: SendStream<Bytes>) {
    while let Some(chunk) = recv.data().await {
        let Ok(mut data) = chunk else {
            return;
        };
        let _ = recv.flow_control().release_capacity(data.len());
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) if granted > 0 => {
                    let part = data.split_to(granted.min(data.len()));
                    if send.send_data(part, false).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}
