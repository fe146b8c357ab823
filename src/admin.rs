//! The tunnel's own HTTP endpoints: readiness (15021), Prometheus metrics (15020) and a local
//! admin port (127.0.0.1:15000) with a dump of the mesh state in ztunnel's schema (`dump`, read
//! by `istioctl ztunnel-config`), the authorization explainer (`explain`) and the live view of
//! the node's traffic (`live_view`).

use std::convert::Infallible;
use std::sync::Arc;

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

mod logging;
mod ready;

mod dump;
mod explain;
pub mod live_view;

use crate::identity::SecretManager;
use crate::inpod::manager::PodTable;
use crate::metrics::Metrics;
use crate::proxy::Scope;
use crate::state::StateHandle;
use crate::xds::XdsHandle;

/// Shared view the endpoints read from.
pub struct AdminState {
    /// What `/healthz/ready` answers: the start-up gates, then not draining.
    readiness: Readiness,
    /// Cleared when shutdown starts, so the endpoint stops sending new traffic our way while
    /// connections drain.
    not_draining: watch::Sender<bool>,
    pub metrics: Arc<Metrics>,
    pub state: StateHandle,
    pub certs: Arc<SecretManager>,
    /// Shared mode's running pods (empty in dedicated mode).
    pub pods: PodTable,
    /// The xDS client's view (`None` when the mesh comes from a local file).
    pub xds: Option<XdsHandle>,
    /// The tunnel's network, on which `/debug/authorize` looks destination IPs up.
    pub network: String,
    /// Dedicated mode's scope: the live view lists the workloads it serves as local (shared
    /// mode lists `pods`).
    pub local_scope: Option<Scope>,
}

impl AdminState {
    /// Ready once every condition of `readiness` (the mode's start-up gates) holds, until
    /// [`start_draining`](Self::start_draining).
    pub fn new(
        readiness: Readiness,
        metrics: Arc<Metrics>,
        state: StateHandle,
        certs: Arc<SecretManager>,
        pods: PodTable,
        xds: Option<XdsHandle>,
        network: String,
    ) -> AdminState {
        let (not_draining, flag) = watch::channel(true);
        AdminState {
            readiness: readiness.require(flag, "shutting down: draining connections"),
            not_draining,
            metrics,
            state,
            certs,
            pods,
            xds,
            network,
            local_scope: None,
        }
    }

    /// The live view shows the workloads `scope` serves as this node's pods (dedicated mode).
    pub fn with_local_scope(mut self, scope: Scope) -> AdminState {
        self.local_scope = Some(scope);
        self
    }

    /// Not ready from now on: the tunnel is shutting down.
    pub fn start_draining(&self) {
        self.not_draining.send_replace(false);
    }

    /// Why `/healthz/ready` says not ready: the first unmet start-up gate, else (shared mode)
    /// the first running pod without a valid certificate; `None` when ready.
    fn not_ready(&self) -> Option<String> {
        if let Some(gate) = self.readiness.missing() {
            return Some(gate.to_string());
        }
        ready::missing_certificate(&self.pods, &self.certs)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Readiness,
    Metrics,
    Admin,
}

impl Endpoint {
    /// The listener's name in logs.
    fn name(self) -> &'static str {
        match self {
            Endpoint::Readiness => "readiness",
            Endpoint::Metrics => "metrics",
            Endpoint::Admin => "admin",
        }
    }
}

/// Connections served at once per endpoint family; more are closed at once. Probes and
/// scrapers need a handful, and the rest of the process's descriptors belong to the data path.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send a request's headers (each request on a kept-alive
/// connection too) before the connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one endpoint family on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, admin: Arc<AdminState>) {
    accept::serve_limited(
        listener,
        endpoint.name(),
        MAX_CONNECTIONS,
        |tcp, _, slot| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(route(endpoint, &admin, req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        },
    )
    .await
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}\n"),
        ),
    }
}

fn route(endpoint: Endpoint, admin: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (endpoint, req.uri().path()) {
        (Endpoint::Readiness, "/healthz/ready") => match admin.not_ready() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (Endpoint::Metrics, "/metrics") | (Endpoint::Metrics, "/stats/prometheus") => {
            text(StatusCode::OK, admin.metrics.encode())
        }
        (Endpoint::Admin, "/config_dump") => match dump::config_dump(admin) {
            Ok(body) => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts are valid"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding /config_dump: {e}\n"),
            ),
        },
        (Endpoint::Admin, "/logging") => {
            let (status, body) = logging::handle(req.method(), req.uri().query());
            text(status, body)
        }
        (Endpoint::Admin, "/debug/authorize") => {
            let store = admin.state.read();
            match explain::explain_query(req.uri().query().unwrap_or(""), &store, &admin.network) {
                Ok(explanation) => json(StatusCode::OK, &explanation),
                Err(e @ explain::ExplainError::NoWorkload(_)) => {
                    text(StatusCode::NOT_FOUND, format!("{e}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Endpoint::Admin, "/live") => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(live_view::PAGE.as_bytes())))
            .expect("static response parts are valid"),
        (Endpoint::Admin, "/live/graph.json") => {
            json(StatusCode::OK, &live_view::graph_json(admin))
        }
        (Endpoint::Admin, "/") => text(
            StatusCode::OK,
            "endpoints: /config_dump, /debug/authorize?source_identity=&source_ip=&destination=&port=, \
             /logging (the log filter; POST ?level=<directives> or ?reset to change it), \
             /live (the node's traffic as a graph; its data: /live/graph.json)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
