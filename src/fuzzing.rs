//! Entry points for the fuzz targets (`fuzz/`) and the tests that replay their corpus
//! (`tests/fuzz_corpus.rs`). Not an API: hidden from the docs. Each function feeds bytes to the
//! decoders the daemon runs on untrusted input, the same code paths, without sockets.
//!
//! None of them may panic, whatever the bytes: a panic here is a bug in the product.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use nodetunnel_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::dns::{fit_reply, Arrival, Handler, Transport, Upstream};
use crate::hbone::server::{self as hbone_server, ConnectTarget, RequestError};
use crate::metrics::Metrics;
use crate::socket::SocketFactory;
use crate::state::{load_str, Defaults, LoadError, Loaded, StateHandle, Store, StoreDelta};
use crate::xds::response::{apply, convert, Refused};
use crate::xds::ResourceType;

/// A current-thread runtime per fuzzing thread: the async decoders (HTTP/2, the DNS handler)
/// run on it without any real I/O.
fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime without I/O builds");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// A delta xDS response as the xDS client receives it. Byte 0 picks the stream's type (even:
/// Address, odd: Authorization); the rest is the `DeltaDiscoveryResponse` protobuf. Every
/// resource is converted without `apply`'s panic guard (so the fuzzer sees a panic in the
/// conversion, which in production would only NACK), then the whole response is applied to
/// an empty store as the client does. Returns how many resources were applied, or the
/// decode error.
pub fn xds_response(data: &[u8]) -> Result<usize, prost::DecodeError> {
    let kind = match data.first() {
        Some(b) if b % 2 == 1 => ResourceType::Authorization,
        _ => ResourceType::Address,
    };
    let response = DeltaDiscoveryResponse::decode(data.get(1..).unwrap_or_default())?;
    let defaults = Defaults::default();
    let mut delta = StoreDelta::default();
    for resource in response.resources.iter().cloned() {
        match convert(kind, resource, &defaults, &mut delta) {
            Ok(()) | Err(Refused::Invalid(_) | Refused::Unsupported(_)) => {}
        }
    }
    let state = StateHandle::new(Store::default());
    let applied = apply(kind, response, &state, &defaults);
    Ok(applied.updated.len())
}

/// A `LOCAL_XDS_PATH` file's contents. Not UTF-8 is refused before parsing, as reading the
/// file (`read_to_string`) refuses it.
pub fn local_yaml(data: &[u8]) -> Result<Loaded, LoadError> {
    let path = Path::new("fuzz-input.yaml");
    let text = std::str::from_utf8(data).map_err(|e| LoadError::Unlocated {
        path: path.to_path_buf(),
        message: format!("not UTF-8: {e}"),
    })?;
    load_str(text, path, &Defaults::default())
}

/// Bytes from a peer on an HBONE connection after TLS: the client preface is prepended, the
/// rest (SETTINGS, HEADERS with the CONNECT, DATA, …) is `data`, served by the real
/// [`hbone_server::serve`] with the tunnel's HTTP/2 settings. Each stream's CONNECT target is
/// parsed as the inbound proxy does and the stream refused. Returns the targets (or why each
/// request was not a CONNECT) and how the connection ended (`Ok`: still open when the input
/// ran out).
pub fn hbone_connect(
    data: &[u8],
) -> (Vec<Result<ConnectTarget, RequestError>>, Result<(), String>) {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&targets);
    let handle = move |incoming: hbone_server::IncomingStream| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(incoming.target());
        }
        async move { incoming.refuse(StatusCode::BAD_REQUEST) }
    };
    let drained = Arc::new(AtomicBool::new(false));
    let io = ScriptedIo {
        input,
        at: 0,
        drained: Arc::clone(&drained),
    };
    let ended = block_on(async {
        // Bounds far beyond one input's run: the target is the decoding, not the timers.
        let options = hbone_server::ServeOptions {
            handshake_deadline: tokio::time::Instant::now() + Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ping: crate::config::PingConfig::default(),
        };
        let serving = hbone_server::serve(io, handle, std::future::pending(), options);
        tokio::select! {
            // Polled first: everything the input holds is decoded before the other branch
            // gets a turn.
            biased;
            served = serving => served.map_err(|e| e.to_string()),
            () = idle_after(&drained) => Ok(()),
        }
    });
    let targets = targets.lock().map(|t| t.clone()).unwrap_or_default();
    (targets, ended)
}

/// Resolves once the peer's input is all read and the server has had a few more turns to
/// act on it. Not EOF: h2 hands out no stream of a connection whose socket has closed, so an
/// input ending in EOF would never reach the CONNECT parsing.
async fn idle_after(drained: &AtomicBool) {
    while !drained.load(Ordering::Relaxed) {
        tokio::task::yield_now().await;
    }
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// The peer's side of a connection, scripted: reads return `input` and then nothing (pending,
/// with `drained` set), writes are accepted and dropped.
struct ScriptedIo {
    input: Vec<u8>,
    at: usize,
    drained: Arc<AtomicBool>,
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.input[self.at..];
        if rest.is_empty() {
            self.drained.store(true, Ordering::Relaxed);
            return Poll::Pending;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The mesh the DNS handler answers from: the repository's rich fixture.
fn dns_handler() -> &'static Handler {
    static HANDLER: OnceLock<Handler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let mesh = include_str!("../tests/fixtures/rich-mesh.yaml");
        let store = load_str(mesh, Path::new("rich-mesh.yaml"), &Defaults::default())
            .map(|loaded| loaded.store)
            .unwrap_or_default();
        Handler {
            state: StateHandle::new(store),
            namespace: None,
            network: String::new(),
            cluster_domain: "cluster.local".into(),
            // No nameserver: a query not answered from the mesh fails at once (SERVFAIL)
            // instead of leaving the process.
            upstream: Arc::new(Upstream::new(
                Err("fuzzing: no upstream".into()),
                Duration::from_secs(1),
                1,
            )),
            sockets: SocketFactory::current(None),
            metrics: Arc::new(Metrics::new()),
        }
    })
}

/// One DNS query to the proxy, and what its upstream answers. Byte 0: bit 0 TCP (else UDP);
/// bytes 1–2: length `n` (little-endian) of the query that follows; the rest is an upstream
/// reply, fitted to the client's size as a forwarded reply is (when the query decodes).
/// Returns the reply to the query (`None`: dropped) and the fitted upstream reply.
pub fn dns_query(data: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let transport = match data.first() {
        Some(b) if b & 1 == 1 => Transport::Tcp,
        _ => Transport::Udp,
    };
    let rest = data.get(1..).unwrap_or_default();
    let (query, upstream) = match rest {
        [lo, hi, tail @ ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
            tail.split_at(n)
        }
        _ => (rest, &[][..]),
    };
    let client: SocketAddr = SocketAddr::from(([10, 0, 0, 5], 40000));
    let handler = dns_handler();
    // Where the REDIRECT delivered it; the original destination is unknown (TCP) or looked up
    // and not found (UDP), so a forwarded query falls back to the tunnel's nameservers (none).
    let local: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 15053));
    let arrival = match transport {
        Transport::Tcp => Arrival::Tcp {
            local,
            original: Err("not redirected (fuzz input)".into()),
        },
        Transport::Udp => Arrival::Udp { local },
    };
    let reply = block_on(handler.handle(query, client, &arrival));
    let fitted = hickory_proto::op::Message::from_vec(query)
        .ok()
        .filter(|_| !upstream.is_empty())
        .and_then(|request| {
            let limit = match transport {
                Transport::Udp => crate::dns::client_limit(&request),
                Transport::Tcp => usize::from(u16::MAX),
            };
            fit_reply(&request, upstream.to_vec(), limit)
        });
    (reply, fitted)
}
