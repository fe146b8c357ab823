//! Server side of HBONE: accepts CONNECT streams on an established (already TLS-terminated)
//! HTTP/2 connection and hands each to a handler that decides where it goes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::keepalive::{self, PeerGone};
use super::settings;
use super::stream::H2Stream;
use crate::config::PingConfig;

/// Why a stream request could not be taken as a CONNECT to an address.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("CONNECT authority {0:?} is neither <ip>:<port> nor <hostname>:<port>")]
    BadAuthority(String),
}

/// What a CONNECT asks for: an address, or a service by hostname and service port (what
/// waypoints and newer ztunnels send, `hostname:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectTarget {
    Addr(SocketAddr),
    Hostname { host: String, port: u16 },
}

impl ConnectTarget {
    /// Parses a CONNECT authority. A hostname must be a DNS name (letters, digits, `-`, `.`;
    /// at most 253 characters) and the port nonzero: anything else is not a target.
    pub fn parse(authority: &str) -> Option<ConnectTarget> {
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Some(ConnectTarget::Addr(crate::socket::canonical(addr)));
        }
        let (host, port) = authority.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        let dns_name = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-'))
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            // An all-numeric name would be a malformed IP address, not a hostname.
            && host.bytes().any(|b| b.is_ascii_alphabetic());
        dns_name.then(|| ConnectTarget::Hostname {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The address, when the CONNECT named one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            ConnectTarget::Addr(addr) => Some(*addr),
            ConnectTarget::Hostname { .. } => None,
        }
    }
}

impl std::fmt::Display for ConnectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectTarget::Addr(addr) => write!(f, "{addr}"),
            ConnectTarget::Hostname { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One incoming CONNECT stream, not yet answered.
pub struct IncomingStream {
    /// Read from the request head, which is dropped at once: the stream's task lives as long
    /// as the stream and keeps only what it needs.
    target: Result<ConnectTarget, RequestError>,
    body: RecvStream,
    respond: SendResponse<Bytes>,
}

impl IncomingStream {
    fn new(request: Request<RecvStream>, respond: SendResponse<Bytes>) -> IncomingStream {
        IncomingStream {
            target: requested_target(&request),
            body: request.into_body(),
            respond,
        }
    }

    /// The requested `ip:port` or `hostname:port`, or why the request is not a valid HBONE
    /// CONNECT.
    pub fn target(&self) -> Result<ConnectTarget, RequestError> {
        self.target.clone()
    }

    /// Answers with an error status and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let response = Response::builder()
            .status(status)
            .body(())
            .expect("a status-only response is valid");
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200 and returns the stream as a byte stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(H2Stream::new(send, self.body))
    }
}

/// The CONNECT target `request` asks for.
fn requested_target(request: &Request<RecvStream>) -> Result<ConnectTarget, RequestError> {
    if request.method() != Method::CONNECT {
        return Err(RequestError::NotConnect(request.method().to_string()));
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    ConnectTarget::parse(authority).ok_or_else(|| RequestError::BadAuthority(authority.to_string()))
}

/// How long [`serve`] waits for the peer, and how it notices one that went quiet.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// The HTTP/2 handshake (the client's preface) must be done by then; the caller starts it
    /// at accept, so one deadline covers TLS and HTTP/2 (`HBONE_HANDSHAKE_TIMEOUT`).
    pub handshake_deadline: tokio::time::Instant,
    /// With no stream open for this long the connection is closed (GOAWAY).
    pub idle_timeout: Duration,
    pub ping: PingConfig,
}

/// Why a connection [`serve`] was serving ended other than by the peer closing it.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no HTTP/2 preface before the handshake deadline")]
    HandshakeTimeout,
    #[error("HTTP/2 handshake: {0}")]
    Handshake(h2::Error),
    #[error("HTTP/2: {0}")]
    Connection(h2::Error),
    #[error("peer stopped answering: {0}")]
    PeerGone(PeerGone),
}

/// Counts a connection's streams being handled, and when the last one ended.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    last_ended: Mutex<Option<Instant>>,
}

impl Streams {
    /// How long the connection has had no stream (since `start` when none ever ended).
    fn idle_for(&self, start: Instant) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self.last_ended.lock().unwrap_or_else(|e| e.into_inner());
        Some(last.unwrap_or(start).elapsed())
    }
}

/// Held by a stream's task: counts the stream open until dropped.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: &Arc<Streams>) -> StreamGuard {
        streams.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        *self.0.last_ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one HTTP/2 connection: each CONNECT stream is passed to `handle` on its own task.
/// Returns when the peer closes the connection, when it has carried no stream for
/// `options.idle_timeout` (GOAWAY first), or when a keepalive PING goes unanswered. Once
/// `shutdown` resolves, the connection sends GOAWAY, takes no new streams and ends when its
/// open streams have.
pub async fn serve<IO, H, Fut, S>(
    io: IO,
    handle: H,
    shutdown: S,
    options: ServeOptions,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(IncomingStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .max_concurrent_streams(settings::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(settings::MAX_HEADER_LIST)
        .max_send_buffer_size(settings::MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::time::timeout_at(options.handshake_deadline, handshake)
        .await
        .map_err(|_| ServeError::HandshakeTimeout)?
        .map_err(ServeError::Handshake)?;
    let ping_pong = connection.ping_pong();
    let mut pings = std::pin::pin!(async move {
        match ping_pong {
            Some(ping_pong) => keepalive::watch(ping_pong, options.ping).await,
            None => std::future::pending().await,
        }
    });
    let streams = Arc::new(Streams::default());
    let start = Instant::now();
    let idle_check = tokio::time::sleep(options.idle_timeout);
    let mut idle_check = std::pin::pin!(idle_check);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    loop {
        let next = tokio::select! {
            next = connection.accept() => next,
            gone = &mut pings => return Err(ServeError::PeerGone(gone)),
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                connection.graceful_shutdown();
                continue;
            }
            () = &mut idle_check, if !shutting_down => {
                match streams.idle_for(start) {
                    Some(idle) if idle >= options.idle_timeout => {
                        tracing::debug!(idle_timeout = ?options.idle_timeout, "HBONE connection idle: closing it");
                        shutting_down = true;
                        connection.graceful_shutdown();
                    }
                    // Look again when it could first have been idle long enough.
                    Some(idle) => idle_check
                        .as_mut()
                        .reset(tokio::time::Instant::now() + options.idle_timeout.saturating_sub(idle)),
                    None => idle_check
                        .as_mut()
                        .reset(tokio::time::Instant::now() + options.idle_timeout),
                }
                continue;
            }
        };
        let Some(next) = next else { break };
        let (request, respond) = next.map_err(ServeError::Connection)?;
        let guard = StreamGuard::new(&streams);
        let stream = handle(IncomingStream::new(request, respond));
        tokio::spawn(async move {
            stream.await;
            drop(guard);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod target_tests {
    use super::ConnectTarget;

    #[test]
    fn authorities_parse_as_an_address_or_a_service_hostname() {
        assert_eq!(
            ConnectTarget::parse("10.0.0.1:80"),
            Some(ConnectTarget::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            ConnectTarget::parse("[fd00::1]:443").and_then(|t| t.addr()),
            Some("[fd00::1]:443".parse().unwrap())
        );
        assert_eq!(
            ConnectTarget::parse("Web.Default.svc.cluster.local:8080"),
            Some(ConnectTarget::Hostname {
                host: "web.default.svc.cluster.local".into(),
                port: 8080
            })
        );
        for bad in [
            "",
            "web",
            "web:",
            "web:0",
            "web:70000",
            ":80",
            "a..b:80",
            "-a.b:80",
            "a b:80",
            "10.0.0.300:80",
            "1.2.3:80",
            "web/x:80",
            "[::1]:80x",
        ] {
            assert_eq!(ConnectTarget::parse(bad), None, "{bad:?}");
        }
    }
}
