//! `/healthz` (the process serves) and `/readyz` (installed and synced with the API server:
//! only then can pods on this node be enrolled, so only then may the DaemonSet roll on).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use nodetunnel_base::readiness::Readiness;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http_server::{self, text};

/// What `/readyz` waits for, each a flag its owner sets: the plugin binary, kubeconfig and
/// conflist entry are in place (the installer's flag), and the first listing of namespaces and
/// pods has been reconciled (the reconciler's).
pub fn readiness(installed: watch::Receiver<bool>, synced: watch::Receiver<bool>) -> Readiness {
    Readiness::new()
        .require(installed, "the CNI plugin is not installed yet")
        .require(
            synced,
            "the first sync with the Kubernetes API is not done yet",
        )
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(http_server::serve(listener, "health", move |req| {
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
