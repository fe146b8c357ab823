//! `/healthz` (the process serves) and `/readyz` (installed and synced with the API server:
//! only then can pods on this node be enrolled, so only then may the DaemonSet roll on).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http_server::{self, text};

/// What readiness waits for, each a flag its owner sets.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The plugin binary, kubeconfig and conflist entry are in place (the installer's flag).
    pub installed: watch::Receiver<bool>,
    /// The first listing of namespaces and pods has been reconciled (the reconciler's flag).
    pub synced: watch::Receiver<bool>,
}

impl Readiness {
    /// `None` when ready, otherwise what is missing.
    pub fn missing(&self) -> Option<&'static str> {
        match (*self.installed.borrow(), *self.synced.borrow()) {
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
    Ok(http_server::serve(listener, move |req| {
        let response = answer(&req, &readiness);
        async move { response }
    }))
}

fn answer(req: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness.missing() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
