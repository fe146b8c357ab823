//! The accept-and-serve loop of the agent's two small HTTP/1.1 servers: health on TCP and
//! plugin events on a Unix socket.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use nodetunnel_base::accept::{self, Listener};
use tokio::io::{AsyncRead, AsyncWrite};

/// Connections served at once per server; more are closed at once (a node starting many pods
/// runs a few dozen CNI ADDs in parallel at most).
pub const MAX_CONNECTIONS: usize = 128;

/// How long a client has to send a request's headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves every connection of `listener` (named `name` in logs) with `handler`, each on its own
/// task, until dropped. Failed accepts are retried by [`accept::serve`].
pub async fn serve<L, H, F>(listener: L, name: &'static str, handler: H)
where
    L: Listener,
    L::Stream: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    accept::serve_limited(
        listener,
        name,
        MAX_CONNECTIONS,
        move |stream, _peer, slot| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        },
    )
    .await
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests;
