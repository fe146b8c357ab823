//! HBONE over any byte stream, and CONNECTs to `hostname:port` targets: what double HBONE
//! (multi-network meshes, `crate::state::network_gateway`) needs besides ordinary HBONE.
//!
//! The inner layer of double HBONE is a whole HBONE connection — mTLS to the destination's
//! tunnel, HTTP/2, one CONNECT — carried inside an outer CONNECT stream to the network
//! gateway. The gateway never sees into it. Both layers name the destination service as
//! `hostname:port`, which is why the target here is text, not a socket address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::client::{spawn_driver, Connection};
use super::settings;
use super::stream::H2Stream;

/// The header carrying the client's network on double HBONE's inner CONNECT (ztunnel's
/// `x-forwarded-network`): the destination can tell the request crossed a gateway.
pub const FORWARDED_NETWORK_HEADER: &str = "x-forwarded-network";

#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error("inner TLS handshake with the destination behind {via}: {source}")]
    Tls {
        via: SocketAddr,
        source: std::io::Error,
    },
    #[error("the destination behind {via} did not negotiate ALPN h2")]
    NoH2 { via: SocketAddr },
    #[error("inner HTTP/2 handshake with the destination behind {via}: {source}")]
    Handshake { via: SocketAddr, source: h2::Error },
    #[error("CONNECT to {authority}: {source}")]
    Stream {
        authority: String,
        source: h2::Error,
    },
    #[error("CONNECT to {authority} refused with HTTP {status}")]
    Refused {
        authority: String,
        status: StatusCode,
    },
    #[error("CONNECT target {0:?} is not a valid authority")]
    BadAuthority(String),
}

/// Runs TLS (`tls`, which verifies the peer's identity) and the HTTP/2 handshake over `io`,
/// already connected to the peer through `via` (for errors and logs only). The server name
/// sent is `via`'s address; the tunnel's verifier checks SPIFFE identities, not names.
pub async fn handshake_over<T>(
    io: T,
    tls: Arc<rustls::ClientConfig>,
    via: SocketAddr,
) -> Result<Connection, NestedError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server_name = ServerName::IpAddress(via.ip().to_canonical().into());
    let tls_stream = TlsConnector::from(tls)
        .connect(server_name, io)
        .await
        .map_err(|source| NestedError::Tls { via, source })?;
    if tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(NestedError::NoH2 { via });
    }
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|source| NestedError::Handshake { via, source })?;
    Ok(spawn_driver(send, connection, via))
}

/// Opens a CONNECT stream to `authority` (`host:port` or `ip:port`) on `connection`, with
/// `forwarded: for=<client>` and the extra `headers`; anything but 200 is an error.
pub async fn connect_authority(
    connection: &Connection,
    authority: &str,
    forwarded_for: Option<IpAddr>,
    headers: &[(&'static str, &str)],
) -> Result<H2Stream, NestedError> {
    let stream_err = |source| NestedError::Stream {
        authority: authority.to_string(),
        source,
    };
    let mut request = Request::builder().method(Method::CONNECT).uri(authority);
    if let Some(ip) = forwarded_for {
        let value = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        request = request.header("forwarded", format!("for={value}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(())
        .map_err(|_| NestedError::BadAuthority(authority.to_string()))?;
    let mut send = connection.sender().ready().await.map_err(stream_err)?;
    let (response, send_stream) = send.send_request(request, false).map_err(stream_err)?;
    let response = response.await.map_err(stream_err)?;
    if response.status() != StatusCode::OK {
        return Err(NestedError::Refused {
            authority: authority.to_string(),
            status: response.status(),
        });
    }
    Ok(H2Stream::new(send_stream, response.into_body()))
}
