//! The accept-and-serve loop of the agent's two small HTTP/1.1 servers: health on TCP and
//! plugin events on a Unix socket.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nodetunnel_base::accept::{self, Listener};
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves every connection of `listener` (named `name` in logs) with `handler`, each on its own
/// task, until dropped. Failed accepts are retried by [`accept::serve`].
pub async fn serve<L, H, F>(listener: L, name: &'static str, handler: H)
where
    L: Listener,
    L::Stream: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    accept::serve(listener, name, move |stream, _peer| {
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
}
