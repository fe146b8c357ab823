//! The gRPC port's accept side, bounded so hostile or broken clients cannot take the process's
//! descriptors: connections are capped overall and per source address
//! (`nodetunnel_base::admission`, the tunnel's 15008 caps), and one deadline from accept covers
//! the TLS handshake and the client's HTTP/2 preface, so a client that connects and says
//! nothing — or finishes TLS and then stalls — is closed instead of holding a task and an fd.
//!
//! TLS is terminated here, not by tonic (whose acceptor has no deadline on the preface); the
//! stream handed to tonic reports the same connect info tonic's own TLS would, so
//! `Request::peer_certs` and `remote_addr` keep working.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nodetunnel_base::admission::{Admitted, ConnectionLimits, Names};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Concurrent streams per connection: a tunnel holds one xDS stream and a few certificate
/// calls; 200 is the HBONE value (ztunnel's).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 200;
/// Largest request header list (HBONE's 64 KiB): gRPC metadata is a token and a few names.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Largest HTTP/2 frame accepted: the protocol's minimum and default, 16 KiB.
pub const MAX_FRAME_BYTES: u32 = 16 * 1024;

/// The client's HTTP/2 preface (`PRI * HTTP/2.0...`), in bytes: once this much has arrived the
/// handshake deadline no longer applies and PINGs watch the connection.
const H2_PREFACE_LEN: usize = 24;

/// What the refusal log line calls the port and its settings.
const NAMES: Names = Names {
    listener: "control plane gRPC",
    total_setting: "CONTROL_MAX_CONNECTIONS",
    per_source_setting: "CONTROL_MAX_CONNECTIONS_PER_IP",
};

/// The gRPC port's bounds (README, control plane settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcBounds {
    /// `CONTROL_HANDSHAKE_TIMEOUT`: from accept to the end of the client's HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// `CONTROL_MAX_CONNECTIONS`
    pub max_connections: usize,
    /// `CONTROL_MAX_CONNECTIONS_PER_IP`
    pub max_connections_per_ip: usize,
    /// `CONTROL_PING_INTERVAL`: an HTTP/2 PING after this long without a frame from the client.
    pub ping_interval: Duration,
    /// `CONTROL_PING_TIMEOUT`: an unanswered PING closes the connection after this long.
    pub ping_timeout: Duration,
}

impl Default for GrpcBounds {
    /// The tunnel's 15008 values.
    fn default() -> GrpcBounds {
        GrpcBounds {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 16384,
            max_connections_per_ip: 1024,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

/// TCP keepalive on accepted connections (the tunnel's `KEEPALIVE_*` defaults): a tunnel node
/// that vanished without a FIN is noticed even while its stream is idle.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(180);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(180);
const TCP_KEEPALIVE_RETRIES: u32 = 9;

/// Why the TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the serving certificate chain is not PEM: {0}")]
    Chain(rustls::pki_types::pem::Error),
    #[error("the serving key is not a PEM private key: {0}")]
    Key(rustls::pki_types::pem::Error),
    #[error("the root certificate is not PEM: {0}")]
    RootPem(rustls::pki_types::pem::Error),
    #[error("the root certificate is not usable as a trust anchor: {0}")]
    Root(rustls::Error),
    #[error("the client certificate verifier: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
    #[error("rustls refused the configuration: {0}")]
    Config(rustls::Error),
}

/// A TLS acceptor serving `chain_pem`/`key_pem`, offering h2, and verifying client
/// certificates against `client_roots_pem` when a client presents one (callers without one
/// authenticate with a token).
pub fn tls_acceptor(
    chain_pem: &str,
    key_pem: &str,
    client_roots_pem: &str,
) -> Result<TlsAcceptor, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_roots_pem.as_bytes()) {
        roots
            .add(cert.map_err(TlsSetupError::RootPem)?)
            .map_err(TlsSetupError::Root)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TlsSetupError::Verifier)?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsSetupError::Chain)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsSetupError::Key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsSetupError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Established TLS connections from `listener`, for `serve_with_incoming_shutdown`. Dropping
/// the stream (the server stopped) stops accepting.
pub struct Incoming {
    connections: mpsc::Receiver<Conn>,
    accept: JoinHandle<()>,
}

impl Incoming {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, bounds: GrpcBounds) -> Incoming {
        let limits =
            ConnectionLimits::new(NAMES, bounds.max_connections, bounds.max_connections_per_ip);
        // Each waiting connection holds a place under the caps, so the queue is bounded by
        // them; tonic takes connections as soon as they are ready.
        let (tx, connections) = mpsc::channel(64);
        let accept = tokio::spawn(nodetunnel_base::accept::serve(
            listener,
            "control plane gRPC",
            move |tcp, peer: SocketAddr| {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                // Over a cap: dropped unanswered; `admit` logged it (rate-limited).
                let Ok(place) = limits.admit(peer.ip()) else {
                    return;
                };
                keep_alive(&tcp, peer);
                let deadline = Instant::now() + bounds.handshake_timeout;
                tokio::spawn(handshake(
                    tcp,
                    peer,
                    place,
                    acceptor.clone(),
                    deadline,
                    bounds.handshake_timeout,
                    tx.clone(),
                ));
            },
        ));
        Incoming {
            connections,
            accept,
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl futures_util::Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|c| c.map(Ok))
    }
}

fn keep_alive(tcp: &TcpStream, peer: SocketAddr) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_TIME)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(src = %peer, %error, "cannot turn on TCP keepalive");
    }
    let _ = tcp.set_nodelay(true);
}

/// TLS within the deadline, then the connection goes to tonic still owing its preface by
/// the same deadline. Silent clients are reaped by the thousand under a flood: debug lines.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    place: Admitted,
    acceptor: TlsAcceptor,
    deadline: Instant,
    timeout: Duration,
    tx: mpsc::Sender<Conn>,
) {
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let conn = Conn {
                tls,
                preface: Some(PrefaceWait {
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    seen: 0,
                    timeout,
                }),
                _place: place,
            };
            // Fails only when the server has stopped; the connection is then dropped.
            let _ = tx.send(conn).await;
        }
        Ok(Err(error)) => {
            tracing::debug!(src = %peer, %error, "gRPC connection closed: TLS handshake failed")
        }
        Err(_) => tracing::debug!(
            src = %peer,
            "gRPC connection closed: TLS handshake not finished within {timeout:?} (CONTROL_HANDSHAKE_TIMEOUT)"
        ),
    }
}

/// The HTTP/2 preface still owed, and by when.
struct PrefaceWait {
    deadline: Pin<Box<Sleep>>,
    seen: usize,
    timeout: Duration,
}

/// One established connection under the caps; dropping it frees its place.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    preface: Option<PrefaceWait>,
    _place: Admitted,
}

impl Connected for Conn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tls).poll_read(cx, buf);
        let Some(wait) = &mut this.preface else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                wait.seen += buf.filled().len() - before;
                if wait.seen >= H2_PREFACE_LEN {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if wait.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no HTTP/2 preface within {:?} of accept (CONTROL_HANDSHAKE_TIMEOUT)",
                        wait.timeout
                    ),
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
