//! A hand-made HBONE client for tests that play a peer the tunnel's own client never would:
//! TCP from a pod address inside a node namespace, TLS 1.3 with ALPN `h2` presenting any
//! certificate a [`TestCa`] issues, then HTTP/2 streams with whatever `:authority` the test
//! writes. It shares no code with the daemon, so it checks the tunnel's inbound side against
//! the wire contract (docs/contracts.md, "HBONE"), not against itself.
//!
//! ```text
//! let ca = TestCa::load(&topo.path("ca"))?;
//! let cert = ca.issue("spiffe://cluster.local/ns/default/sa/client")?;
//! let hbone = RawHbone::connect(topo.ns("n1"), addr::CLIENT, (addr::SERVER, 15008).into(),
//!                               &cert, ca.roots())?;
//! let refused = hbone.connect_to((addr::SERVER, 15020).into())?;   // status 400, no stream
//! let mut ok = hbone.connect_to((addr::SERVER, 8080).into())?.into_stream().unwrap();
//! ok.echo(b"hello")?;                                               // same HTTP/2 connection
//! ```
//!
//! The calls block: the HTTP/2 connection runs on a small runtime of its own, so a test
//! drives it from plain threads like the rest of the test bed. Every wait is bounded by
//! [`IO_TIMEOUT`] so a broken tunnel fails the test instead of hanging it.

mod pki;
pub(crate) mod verify;

pub use pki::{ClientCert, TestCa};

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::runtime::Runtime;

use crate::netns::Netns;
use crate::traffic::{connect_from, IO_TIMEOUT};

/// What went wrong, naming the step: a refused TLS handshake, for example, reads
/// "TLS with 10.77.2.10:15008: received fatal alert: ...".
#[derive(Debug, thiserror::Error)]
pub enum RawHboneError {
    #[error("test PKI: {what}: {reason}")]
    Pki { what: String, reason: String },
    #[error("starting the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("TCP {src} -> {dst}: {source}")]
    Tcp {
        src: Ipv4Addr,
        dst: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS config: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("TLS with {server}: {source}")]
    Tls {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} negotiated ALPN {alpn:?}, not h2")]
    NoH2 {
        server: SocketAddr,
        alpn: Option<String>,
    },
    #[error("{server} presented a certificate without exactly one spiffe:// URI SAN: {reason}")]
    ServerIdentity { server: SocketAddr, reason: String },
    #[error("HTTP/2 handshake with {server}: {source}")]
    Handshake {
        server: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("request {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: h2::Error,
    },
    #[error("stream {what}: {source}")]
    Stream {
        what: String,
        #[source]
        source: h2::Error,
    },
    #[error("stream {what}: {reason}")]
    StreamEnded { what: String, reason: String },
    #[error("{what}: no answer within {IO_TIMEOUT:?}")]
    Timeout { what: String },
}

type Result<T, E = RawHboneError> = std::result::Result<T, E>;

/// One mTLS HTTP/2 connection to a tunnel's HBONE port.
pub struct RawHbone {
    rt: Arc<Runtime>,
    server: SocketAddr,
    server_identity: String,
    send: SendRequest<Bytes>,
}

impl RawHbone {
    /// Connects from `src` inside `ns` to `server` (a pod address, port 15008), presenting
    /// `cert`, trusting `roots` for the server's certificate, and completes the HTTP/2
    /// handshake. A tunnel that refuses the client certificate does so after the client's
    /// side of the TLS 1.3 handshake is done, so that refusal may surface here or only at the
    /// first request.
    pub fn connect(
        ns: &Netns,
        src: Ipv4Addr,
        server: SocketAddr,
        cert: &ClientCert,
        roots: &[CertificateDer<'static>],
    ) -> Result<RawHbone> {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("raw-hbone")
                .enable_all()
                .build()
                .map_err(RawHboneError::Runtime)?,
        );
        let tcp = ns
            .run(move || connect_from(src, server))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| RawHboneError::Tcp {
                src,
                dst: server,
                source,
            })?;
        let config = verify::client_config(cert, roots)?;
        let (send, server_identity) = rt.block_on(bounded(
            format!("connecting to {server}"),
            handshake(tcp, server, config),
        ))??;
        Ok(RawHbone {
            rt,
            server,
            server_identity,
            send,
        })
    }

    /// The SPIFFE URI the server's certificate carries (the workload whose address was dialed).
    pub fn server_identity(&self) -> &str {
        &self.server_identity
    }

    /// Sends `CONNECT` with `:authority` = `target` and waits for the answer.
    pub fn connect_to(&self, target: SocketAddr) -> Result<Reply> {
        self.connect_authority(&target.to_string())
    }

    /// Sends `CONNECT` with `:authority` = `authority` as written (it need not be valid).
    pub fn connect_authority(&self, authority: &str) -> Result<Reply> {
        let what = format!("CONNECT {authority} via {}", self.server);
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|e| RawHboneError::StreamEnded {
                what: what.clone(),
                reason: format!("cannot build the request: {e}"),
            })?;
        self.request(what, request)
    }

    /// Sends any request (its body stays open) and waits for the response head.
    pub fn request(&self, what: String, request: Request<()>) -> Result<Reply> {
        let mut send = self.send.clone();
        let rt = self.rt.clone();
        let (status, tunnel) = self.rt.block_on(bounded(what.clone(), async move {
            let request_error = |source| RawHboneError::Request {
                what: what.clone(),
                source,
            };
            send = send.ready().await.map_err(request_error)?;
            let (response, body) = send.send_request(request, false).map_err(request_error)?;
            let response = response.await.map_err(request_error)?;
            let status = response.status();
            let tunnel = (status == StatusCode::OK).then(|| RawStream {
                rt,
                what,
                send: body,
                recv: response.into_body(),
                buffered: BytesMut::new(),
            });
            Ok::<_, RawHboneError>((status, tunnel))
        }))??;
        Ok(Reply { status, tunnel })
    }
}

/// The answer to one request: its status, and the open stream when it was 200.
pub struct Reply {
    pub status: StatusCode,
    tunnel: Option<RawStream>,
}

impl Reply {
    /// The tunnel stream of a 200 answer; `None` for any other status.
    pub fn into_stream(self) -> Option<RawStream> {
        self.tunnel
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .finish()
    }
}

/// An accepted CONNECT stream: bytes to and from the workload behind the tunnel.
pub struct RawStream {
    rt: Arc<Runtime>,
    what: String,
    send: SendStream<Bytes>,
    recv: RecvStream,
    buffered: BytesMut,
}

impl RawStream {
    /// Sends `data` (waiting for flow-control capacity as needed).
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let what = self.what.clone();
        let send = &mut self.send;
        let mut data = Bytes::copy_from_slice(data);
        self.rt
            .block_on(bounded(format!("{what}: writing"), async move {
                let failed = |source| RawHboneError::Stream {
                    what: what.clone(),
                    source,
                };
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .ok_or_else(|| RawHboneError::StreamEnded {
                            what: what.clone(),
                            reason: "closed while writing".into(),
                        })?
                        .map_err(failed)?;
                    let chunk = data.split_to(granted.min(data.len()));
                    send.send_data(chunk, false).map_err(failed)?;
                }
                Ok::<_, RawHboneError>(())
            }))?
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        let what = self.what.clone();
        let (recv, buffered) = (&mut self.recv, &mut self.buffered);
        self.rt
            .block_on(bounded(format!("{what}: reading"), async move {
                while buffered.len() < n {
                    let chunk = recv
                        .data()
                        .await
                        .ok_or_else(|| RawHboneError::StreamEnded {
                            what: what.clone(),
                            reason: format!("ended after {} of {n} bytes", buffered.len()),
                        })?
                        .map_err(|source| RawHboneError::Stream {
                            what: what.clone(),
                            source,
                        })?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    buffered.extend_from_slice(&chunk);
                }
                Ok::<_, RawHboneError>(buffered.split_to(n).to_vec())
            }))?
    }

    /// Writes `data` and checks the same bytes come back (an echo server behind the tunnel).
    pub fn echo(&mut self, data: &[u8]) -> Result<()> {
        self.write_all(data)?;
        let back = self.read_exact(data.len())?;
        if back != data {
            return Err(RawHboneError::StreamEnded {
                what: self.what.clone(),
                reason: format!("echo differs: sent {data:?}, got {back:?}"),
            });
        }
        Ok(())
    }
}

/// TLS (as `config` says), ALPN h2, the server's identity, then the HTTP/2 client handshake;
/// the connection is driven by a task on the current runtime until it ends.
async fn handshake(
    tcp: std::net::TcpStream,
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(SendRequest<Bytes>, String)> {
    let tls_error = |source| RawHboneError::Tls { server, source };
    let tcp = tokio::net::TcpStream::from_std(tcp).map_err(tls_error)?;
    // Never checked (SPIFFE certificates carry no IP SAN); rustls needs a name to send.
    let name = ServerName::IpAddress(server.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(tls_error)?;
    let session = tls.get_ref().1;
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    if alpn.as_deref() != Some(b"h2".as_slice()) {
        return Err(RawHboneError::NoH2 {
            server,
            alpn: alpn.map(|p| String::from_utf8_lossy(&p).into_owned()),
        });
    }
    let server_identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "no certificate".to_string())
        .and_then(|leaf| verify::spiffe_uri(leaf))
        .map_err(|reason| RawHboneError::ServerIdentity { server, reason })?;
    let (send, connection) = h2::client::handshake(tls)
        .await
        .map_err(|source| RawHboneError::Handshake { server, source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%server, error = %e, "raw HBONE connection ended");
        }
    });
    Ok((send, server_identity))
}

/// `future`, or a [`RawHboneError::Timeout`] naming `what` after [`IO_TIMEOUT`].
async fn bounded<T>(what: String, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(IO_TIMEOUT, future)
        .await
        .map_err(|_| RawHboneError::Timeout { what })
}
