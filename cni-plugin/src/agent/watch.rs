//! The Kubernetes watches feeding the reconciler: every Namespace (their labels decide
//! enrollment) and the Pods scheduled on this node (`spec.nodeName`), through kube-rs'
//! watcher, which relists after a lost watch and backs off while the API server is away.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::reconcile::Input;

/// Forwards namespace events until the reconciler goes away.
pub async fn namespaces(client: Client, inputs: mpsc::Sender<Input>) {
    let api: Api<Namespace> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    forward(stream, inputs, "namespaces", |event| {
        Input::Namespaces(Box::new(event))
    })
    .await;
}

/// Forwards events of the pods on `node` until the reconciler goes away.
pub async fn pods(client: Client, node: String, inputs: mpsc::Sender<Input>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = watcher(api, config).default_backoff();
    forward(stream, inputs, "pods", |event| Input::Pods(Box::new(event))).await;
}

async fn forward<K, S>(
    stream: S,
    inputs: mpsc::Sender<Input>,
    what: &'static str,
    wrap: fn(watcher::Event<K>) -> Input,
) where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if inputs.send(wrap(event)).await.is_err() {
                    return;
                }
            }
            // The watcher retries by itself (with backoff); say why it had to.
            Err(error) => tracing::warn!(%error, "watching {what}"),
        }
    }
}
