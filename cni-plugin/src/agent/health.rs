//! `/healthz` (the process serves) and `/readyz` (installed and synced with the API server:
//! only then can pods on this node be enrolled, so only then may the DaemonSet roll on).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Pause after a failed accept.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// What readiness waits for; each flag is set by its owner.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The plugin binary, kubeconfig and conflist entry are in place.
    pub installed: Arc<AtomicBool>,
    /// The first listing of namespaces and pods has been reconciled.
    pub synced: Arc<AtomicBool>,
}

impl Readiness {
    /// `None` when ready, otherwise what is missing.
    pub fn missing(&self) -> Option<&'static str> {
        match (
            self.installed.load(Ordering::Relaxed),
            self.synced.load(Ordering::Relaxed),
        ) {
            (true, true) => None,
            (false, _) => Some("the CNI plugin is not installed yet"),
            (true, false) => Some("the first sync with the Kubernetes API is not done yet"),
        }
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, say: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let readiness = readiness.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &readiness)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn answer(req: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" => match readiness.missing() {
            None => (StatusCode::OK, "ready\n".to_string()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
