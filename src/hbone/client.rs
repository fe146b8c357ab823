//! Client side of HBONE: an mTLS HTTP/2 connection to a peer tunnel's 15008, and CONNECT
//! streams opened on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::settings;
use super::stream::H2Stream;

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
}

impl Connection {
    /// True once the connection takes no new streams: its task ended (peer went away, I/O
    /// error), or the peer sent GOAWAY (seen when a stream on it was refused for that). Its
    /// open streams carry on either way; the pool just stops handing it out.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
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

/// Runs TLS and the HTTP/2 handshake over an already connected socket.
pub async fn handshake(
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
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
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    Ok(spawn_driver(send, connection, addr))
}

pub(super) fn spawn_driver<T>(
    send: SendRequest<Bytes>,
    connection: h2::client::Connection<T, Bytes>,
    addr: SocketAddr,
) -> Connection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(peer = %addr, error = %e, "HBONE connection ended with an error");
        }
        flag.store(true, Ordering::Release);
    });
    Connection { send, closed }
}
