//! Client side of HBONE: an mTLS HTTP/2 connection to a peer tunnel's 15008, and CONNECT
//! streams opened on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::keepalive;
use super::settings;
use super::stream::H2Stream;
use crate::config::PingConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {addr} did not negotiate ALPN h2")]
    NoH2 { addr: SocketAddr },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: h2::Error },
    #[error("HTTP/2 stream to {authority}: {source}")]
    Stream {
        authority: SocketAddr,
        source: h2::Error,
    },
    #[error("peer refused CONNECT to {authority} with HTTP {status}")]
    Refused {
        authority: SocketAddr,
        status: StatusCode,
    },
}

impl ClientError {
    /// True when the peer never processed this CONNECT: it was refused because the peer is
    /// going away (GOAWAY: the stream was not sent, or its id was above the peer's last
    /// processed one) or with REFUSED_STREAM. HTTP/2 (RFC 9113 §8.7) says such a request may
    /// be sent again, so the pool retries it on another connection instead of failing the
    /// user's connection — what lets a peer tunnel drain for an upgrade without dropping any.
    ///
    /// One case is ambiguous: h2 also hands the GOAWAY error to a stream the peer did process
    /// if the peer then closes the connection before answering. A retry then costs the
    /// destination one extra connection attempt that carries no data (we send none before the
    /// 200), never duplicated bytes.
    pub fn is_unprocessed(&self) -> bool {
        match self {
            ClientError::Stream { source, .. } => {
                (source.is_go_away() && source.is_remote())
                    || source.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

/// One established HBONE connection. Cloning the handle is cheap; the connection closes when
/// the last handle is dropped and its streams have finished.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// The earliest expiry among the certificates this connection was authenticated with (the
    /// peer's leaf, and ours once the connector adds it): a session must not carry new streams
    /// on the strength of a certificate that is no longer valid.
    expires: Option<SystemTime>,
}

impl Connection {
    /// True once the connection takes no new streams: its task ended (peer went away, I/O
    /// error), or the peer sent GOAWAY (seen when a stream on it was refused for that). Its
    /// open streams carry on either way; the pool just stops handing it out.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether new streams may still go on this connection at `now`: every certificate it was
    /// authenticated with is still valid. Streams already open carry on.
    pub fn usable_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|t| now < t)
    }

    /// Records that one of the certificates behind this connection expires at `not_after`.
    pub fn expires_by(mut self, not_after: SystemTime) -> Connection {
        self.expires = Some(self.expires.map_or(not_after, |t| t.min(not_after)));
        self
    }

    /// Stops the pool handing this connection out (its open streams carry on): after a
    /// CONNECT on it got no answer in time, the peer may be stalled.
    pub fn retire(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The request handle, for CONNECTs this module does not build (`nested.rs`).
    pub(super) fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }

    /// Opens a CONNECT stream to `authority` (the destination workload's `ip:port`).
    pub async fn connect_stream(
        &self,
        authority: SocketAddr,
        forwarded_for: Option<IpAddr>,
    ) -> Result<H2Stream, ClientError> {
        let stream_err = |source| {
            let error = ClientError::Stream { authority, source };
            if error.is_unprocessed() && !self.closed.swap(true, Ordering::AcqRel) {
                tracing::debug!(%authority, %error, "peer tunnel is going away (GOAWAY): new streams go to a new connection");
            }
            error
        };
        let mut send = self.send.clone().ready().await.map_err(stream_err)?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string());
        if let Some(ip) = forwarded_for {
            request = request.header("forwarded", format!("for={}", forwarded_value(ip)));
        }
        let request = request
            .body(())
            .expect("a CONNECT request to a socket address is always valid");
        let (response, send_stream) = send.send_request(request, false).map_err(stream_err)?;
        let response = response.await.map_err(stream_err)?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::Refused {
                authority,
                status: response.status(),
            });
        }
        Ok(H2Stream::new(send_stream, response.into_body()))
    }
}

/// RFC 7239: IPv6 addresses are quoted and bracketed.
fn forwarded_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// The HTTP/2 client settings of every HBONE connection, pooled or nested (double HBONE's
/// inner layer): the same windows, frame size and bounds as the server's.
pub(super) fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .initial_max_send_streams(settings::MAX_CONCURRENT_STREAMS as usize)
        .max_concurrent_streams(settings::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(settings::MAX_HEADER_LIST)
        .max_send_buffer_size(settings::MAX_SEND_BUFFER)
        .enable_push(false);
    builder
}

/// Runs TLS and the HTTP/2 handshake over an already connected socket. The connection is
/// kept alive with PINGs (`ping`); an unanswered one closes it.
pub async fn handshake(
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
    ping: PingConfig,
) -> Result<Connection, ClientError> {
    let addr = tcp.peer_addr().map_err(|source| ClientError::Connect {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })?;
    let server_name = ServerName::IpAddress(addr.ip().to_canonical().into());
    let tls_stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::Tls { addr, source })?;
    if tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(ClientError::NoH2 { addr });
    }
    let peer_expires = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| leaf_not_after(leaf));
    let (send, connection) = h2_builder()
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    let connection = spawn_driver(send, connection, addr, ping);
    Ok(match peer_expires {
        Some(t) => connection.expires_by(t),
        None => connection,
    })
}

/// The leaf's `notAfter`. The TLS verifier has already parsed and accepted it, so `None` (it
/// does not parse again) cannot happen in practice; the connection then just carries no expiry.
fn leaf_not_after(leaf: &rustls::pki_types::CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Drives the connection on its own task until it ends or stops answering PINGs (then it is
/// dropped, which closes the socket and fails its streams).
pub(super) fn spawn_driver<T>(
    send: SendRequest<Bytes>,
    mut connection: h2::client::Connection<T, Bytes>,
    addr: SocketAddr,
    ping: PingConfig,
) -> Connection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let pings = connection.ping_pong();
    tokio::spawn(async move {
        let pings = async move {
            match pings {
                Some(ping_pong) => keepalive::watch(ping_pong, ping).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = &mut connection => if let Err(e) = ended {
                tracing::debug!(peer = %addr, error = %e, "HBONE connection ended with an error");
            },
            gone = pings => {
                tracing::info!(peer = %addr, error = %gone, "HBONE peer stopped answering PINGs: connection closed");
            }
        }
        flag.store(true, Ordering::Release);
    });
    Connection {
        send,
        closed,
        expires: None,
    }
}
