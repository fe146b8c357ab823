//! The plugin's side door into the agent: HTTP/1.1 over `<run_dir>/pluginevent.sock`,
//! `POST /cmdadd` with a [`PluginEvent`]. The answer decides the pod's `ADD`: 200 lets the
//! sandbox start, 400/500 fail it (the plugin fails closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use nodetunnel_base::local_socket::{self, PeerPolicy};
use tokio::sync::{mpsc, oneshot};

use super::http_server::text;
use super::metrics::Metrics;
use super::reconcile::{CniAddOutcome, Input};
use crate::event::{PluginEvent, ADD_PATH};

/// Larger bodies are refused; a real event is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventServerError {
    #[error("creating {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket (replacing a stale file); the returned future serves until dropped.
pub fn bind(
    path: &Path,
    inputs: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) -> Result<impl std::future::Future<Output = ()>, EventServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| EventServerError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    // Whoever can post here enrolls pods: owner-only, and only root or the agent's own user
    // (the plugin runs as root, from the container runtime).
    let listener =
        local_socket::listen_owner_only(path, PeerPolicy::this_user()).map_err(|source| {
            EventServerError::Bind {
                path: path.to_owned(),
                source,
            }
        })?;
    Ok(super::http_server::serve(
        listener,
        "plugin events",
        move |req| {
            let (inputs, metrics) = (inputs.clone(), metrics.clone());
            async move {
                let response = handle(req, inputs).await;
                // Istio counts every answer to the plugin, by status.
                metrics.on_plugin_request(response.status());
                response
            }
        },
    ))
}

async fn handle(req: Request<Incoming>, inputs: mpsc::Sender<Input>) -> Response<Full<Bytes>> {
    if req.uri().path() != ADD_PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path {}", req.uri().path()),
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{ADD_PATH} takes POST"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the event: {error}"),
            )
        }
    };
    let event: PluginEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the event is not valid JSON of the expected shape: {error}"),
            )
        }
    };
    tracing::info!(pod = %format!("{}/{}", event.pod_namespace, event.pod_name), netns = %event.netns, ips = ?event.ips.iter().map(|ip| ip.address.to_string()).collect::<Vec<_>>(), "CNI ADD event");
    let (reply, outcome) = oneshot::channel();
    if inputs.send(Input::CniAdd(event, reply)).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        );
    }
    match outcome.await {
        Ok(CniAddOutcome::Done(message) | CniAddOutcome::Enrolled { message, .. }) => {
            text(StatusCode::OK, message)
        }
        Ok(CniAddOutcome::BadEvent(message)) => text(StatusCode::BAD_REQUEST, message),
        Ok(CniAddOutcome::Failed(message)) => {
            tracing::warn!(%message, "CNI ADD failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

#[cfg(test)]
mod tests;
