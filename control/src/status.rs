//! The control plane's small HTTP status listener: `/ready`, `/debug/connections`,
//! `/debug/mesh`. Plain HTTP/1.1 meant for 127.0.0.1 (it names every connected node), capped
//! and with a header-read timeout like the tunnel's admin endpoints.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use nodetunnel_base::accept;
use nodetunnel_base::readiness::Readiness;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::Connections;
use super::mesh::ResourceType;
use super::watch::{LoadStatus, MeshSnapshot};

/// What the endpoints read.
pub struct StatusState {
    /// Ready while the gRPC server is serving.
    pub readiness: Readiness,
    pub connections: Arc<Connections>,
    pub meshes: watch::Receiver<Arc<MeshSnapshot>>,
    pub load: Arc<Mutex<LoadStatus>>,
}

/// Connections served at once; more are closed at accept. Probes and operators need a
/// handful; the rest of the process's descriptors belong to the gRPC port.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send a request's headers (each request on a kept-alive
/// connection too) before the connection is closed, so silent clients give their place back.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<StatusState>) {
    accept::serve_limited(listener, "status", MAX_CONNECTIONS, |tcp, _, slot| {
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    })
    .await
}

fn route(state: &StatusState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => match state.readiness.missing() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/debug/connections" => json(&serde_json::json!({
            "connections": state.connections.snapshot(),
        })),
        "/debug/mesh" => json(&mesh_status(state)),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /debug/connections, /debug/mesh\n",
        ),
    }
}

fn mesh_status(state: &StatusState) -> serde_json::Value {
    let snapshot = state.meshes.borrow().clone();
    let load = state.load.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let resources: BTreeMap<&str, usize> = ResourceType::ALL
        .into_iter()
        .map(|ty| (ty.short_name(), snapshot.mesh.resources(ty).len()))
        .collect();
    serde_json::json!({
        "file": load.path,
        "generation": snapshot.generation,
        "resources": resources,
        "identities": snapshot.mesh.identity_count(),
        "warnings": load.warnings,
        "last_error": load.last_error,
        "last_error_at": load.last_error_at,
        "failed_loads": load.failed_loads,
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
