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
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use super::client::{h2_builder, spawn_driver, Connection};
use super::stream::H2Stream;
use crate::config::PingConfig;

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
/// sent is `via`'s address; the tunnel's verifier checks SPIFFE identities, not names. The
/// inner connection PINGs like a pooled one (`ping`), so a far end gone silent is noticed.
pub async fn handshake_over(
    carrier: H2Stream,
    tls: Arc<rustls::ClientConfig>,
    via: SocketAddr,
    ping: PingConfig,
) -> Result<Connection, NestedError> {
    let server_name = ServerName::IpAddress(via.ip().to_canonical().into());
    let io = Carrier {
        stream: Some(carrier),
        peer_finished: false,
        shut_down: false,
    };
    let tls_stream = TlsConnector::from(tls)
        .connect(server_name, io)
        .await
        .map_err(|source| NestedError::Tls { via, source })?;
    if tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(NestedError::NoH2 { via });
    }
    let (send, connection) = h2_builder()
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|source| NestedError::Handshake { via, source })?;
    Ok(spawn_driver(send, connection, via, ping))
}

/// The outer CONNECT stream as the inner connection's transport.
///
/// The inner HTTP/2 connection does not always close its transport in step with the far end:
/// it may end on the peer's EOF without shutting down its own side, or shut down its side and
/// end while the far end's END_STREAM is still on its way through the gateway. Dropping a
/// stream that is not closed both ways resets it (RST_STREAM CANCEL, which also discards a
/// queued END_STREAM), and the gateway would log a clean connection as cut. So, dropped:
/// a carrier whose peer has finished sends its own END_STREAM; one that has sent END_STREAM
/// waits (at most [`LINGER`]) for the peer's; one that did neither is reset, as before.
struct Carrier {
    stream: Option<H2Stream>,
    peer_finished: bool,
    shut_down: bool,
}

/// How long a carrier that has finished sending waits for the far end to finish.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

impl Carrier {
    fn stream(&mut self) -> Pin<&mut H2Stream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is only taken on drop"),
        )
    }
}

impl AsyncRead for Carrier {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = self.stream().poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.peer_finished = true;
        }
        read
    }
}

impl AsyncWrite for Carrier {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let done = self.stream().poll_shutdown(cx);
        if matches!(done, Poll::Ready(Ok(()))) {
            self.shut_down = true;
        }
        done
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if self.peer_finished {
            // H2Stream's shutdown queues END_STREAM at once (it never waits), so a no-op
            // waker is enough; an error means the stream is gone already.
            let mut cx = Context::from_waker(Waker::noop());
            let _ = Pin::new(&mut stream).poll_shutdown(&mut cx);
        } else if self.shut_down {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
                });
            }
        }
    }
}

/// Reads and discards until EOF (the far end's END_STREAM) or an error.
async fn drain(stream: &mut H2Stream) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
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
