//! A Kubernetes API server stand-in over plain HTTP, so tests run the REAL kube-rs client code of
//! the CNI plugin and the node agent (gets, paged lists, `kube::runtime::watcher`, patches)
//! against objects the test controls.
//!
//! ```text
//! use nodetunnel_testbed::kube_api::{KubeApi, PodBuilder};
//!
//! let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST)?;     // or Some(&node_netns)
//! kube.write_kubeconfig(&dir.join("kubeconfig"))?;           // hand this to the plugin/agent
//! kube.put_namespace("demo", &[("istio.io/dataplane-mode", "ambient")]);
//! kube.put_pod(PodBuilder::new("demo", "web-1").node("node1").ip(ip).build());
//! assert_eventually!(kube.pod("demo", "web-1").unwrap().metadata.annotations
//!     .is_some_and(|a| a.contains_key("ambient.istio.io/redirection")));
//! ```
//!
//! What it serves (core/v1 only): `/api`, `/api/v1`, `/version`; `/api/v1/namespaces[/{name}]`;
//! `/api/v1/pods` and `/api/v1/namespaces/{ns}/pods[/{name}[/status]]`.
//! - GET a collection: a complete list (`limit`/`continue` ignored, no continue token) with the
//!   current resourceVersion, filtered by `labelSelector` and `fieldSelector`.
//! - GET a collection with `watch=true`: newline-delimited watch events. From
//!   `resourceVersion=N`: every stored event after N, then live ones; absent or `0`: the current
//!   objects as ADDED, then live ones; `sendInitialEvents=true`: the current objects, then a
//!   BOOKMARK annotated `k8s.io/initial-events-end`. A version older than the history gets one
//!   `ERROR` event with a 410 `Expired` Status (as the real server). BOOKMARKs every second with
//!   `allowWatchBookmarks=true`; the stream ends after `timeoutSeconds`. An object that starts or
//!   stops matching a watch's selectors shows up as ADDED / DELETED, as with the real watch cache.
//! - GET an object: the object or a 404 `Status` (`reason: NotFound`).
//! - PATCH an object or its `/status`: merge, strategic-merge (as merge), JSON patch, and
//!   apply (as merge); see [`PatchKind`]. A change bumps the resourceVersion and emits MODIFIED; a
//!   no-op patch changes nothing. Errors: 400 (body not JSON, name changed), 409 (patch names
//!   a stale resourceVersion), 415 (content type), 422 (bad operation, failed `test`, result
//!   not a valid object, uid changed). `fieldManager`, `force` and `dryRun` are ignored.
//! - Anything else: 404 (unknown path) or 405 (method) `Status`. There is no authentication:
//!   the kubeconfig's token is sent and ignored.
//!
//! The server runs on its own thread with its own tokio runtime, so tests can be plain sync
//! `#[test]`s; dropping the [`KubeApi`] stops it and ends every open watch.

mod patch;
mod pod;
mod selector;
mod server;
mod store;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use nodetunnel_base::netns::NetnsHandle;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::netns::Netns;

pub use patch::{PatchError, PatchKind};
pub use pod::PodBuilder;
pub use selector::{FieldSelector, LabelSelector, SelectorError};
use server::Shared;
use store::{Key, Kind};

/// The label the real API server puts on every namespace (`kubernetes.io/metadata.name`).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How often watches that allow bookmarks get one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A running stand-in API server; see the [module docs](self). Dropping it stops the server and
/// ends every open watch (clients see the stream close).
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `ip:0` inside `ns` on a short-lived thread that entered it; the socket stays in that
/// namespace after the thread ends.
fn bind_in(ns: &Netns, ip: Ipv4Addr) -> Result<TcpListener> {
    let name = ns.name();
    let netns = NetnsHandle::open(&ns.path())
        .map_err(|e| Error::io(format!("opening netns {name}"), e.into()))?;
    netns
        .run(|| TcpListener::bind((ip, 0)))
        .map_err(|e| Error::io(format!("binding in netns {name}"), e.into()))?
        .map_err(|e| Error::io(format!("binding the API stand-in to {ip}:0 in {name}"), e))
}

impl KubeApi {
    /// Serves on `ip:0` (an ephemeral port). With `Some(ns)` the listening socket is created
    /// inside that network namespace, so processes there (a node agent, a CNI plugin) reach it at
    /// [`url`](Self::url); `ip` must be an address of that namespace (127.0.0.1 works: the
    /// test bed brings `lo` up). `None` = the caller's namespace.
    pub fn start(netns: Option<&Netns>, ip: Ipv4Addr) -> Result<KubeApi> {
        let listener = match netns {
            Some(ns) => bind_in(ns, ip)?,
            None => TcpListener::bind((ip, 0))
                .map_err(|e| Error::io(format!("binding the API stand-in to {ip}:0"), e))?,
        };
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the API stand-in's address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the API stand-in's socket non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the API stand-in's runtime", e))?;
        let shared = Arc::new(Shared::new(BOOKMARK_INTERVAL));
        let (shutdown, stop) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_shared = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("kube-api-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = ready_tx.send(Ok(()));
                            server::serve(listener, server_shared, stop).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Dropping the runtime here cancels every connection and watch task.
            })
            .map_err(|e| Error::io("spawning the API stand-in's thread", e))?;
        let mut api = KubeApi {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(api),
            Ok(Err(e)) => Err(Error::io("registering the API stand-in's socket", e)),
            Err(_) => {
                api.stop();
                Err(Error::Invalid(
                    "the API stand-in's thread died before serving".to_string(),
                ))
            }
        }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig that points at [`url`](Self::url) (no TLS) with a current context
    /// `testbed`, default namespace `default` and a dummy bearer token (the server ignores
    /// it), the shape istio-cni writes for its plugin.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: testbed\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    namespace: default\n\
             current-context: testbed\n\
             users:\n\
             - name: testbed\n  user:\n    token: testbed-token\n",
            url = self.url()
        );
        std::fs::write(path, text)
            .map_err(|e| Error::io(format!("writing kubeconfig {}", path.display()), e))
    }

    /// Creates namespace `name` with `labels` (plus [`NAMESPACE_NAME_LABEL`], as the real server
    /// adds), or replaces an existing one's labels. Emits ADDED or MODIFIED (always, even when
    /// the labels are the same, so a test can "touch" a namespace).
    pub fn put_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let mut label_map: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        label_map.insert(NAMESPACE_NAME_LABEL.to_string(), json!(name));
        let key = namespace_key(name);
        let mut store = self.shared.store();
        let object = match store.get(&key) {
            Some(current) => {
                let mut o = (*current).clone();
                o["metadata"]["labels"] = Value::Object(label_map);
                o
            }
            None => json!({
                "metadata": {"name": name, "labels": label_map},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }),
        };
        store.put(key, object);
    }

    /// Deletes namespace `name` (only the object: its pods stay); emits DELETED. Returns
    /// whether it existed.
    pub fn delete_namespace(&self, name: &str) -> bool {
        self.shared.store().delete(&namespace_key(name)).is_some()
    }

    /// The stored namespace.
    pub fn namespace(&self, name: &str) -> Option<Namespace> {
        let obj = self.shared.store().get(&namespace_key(name))?;
        serde_json::from_value((*obj).clone()).ok()
    }

    /// Creates or replaces a pod (keyed by `metadata.namespace`, default `default`, and
    /// `metadata.name`). The server fills in `uid` (kept from the stored pod when `pod` has
    /// none), `creationTimestamp` and a new `resourceVersion`; emits ADDED or MODIFIED; returns
    /// the stored pod.
    ///
    /// # Panics
    /// When `pod` has no `metadata.name` (a bug in the test, not input).
    pub fn put_pod(&self, pod: Pod) -> Pod {
        let name = pod
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .expect("KubeApi::put_pod: the pod needs metadata.name");
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let mut object = serde_json::to_value(&pod).unwrap_or_else(|_| json!({}));
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let stored = self.shared.store().put(pod_key(&namespace, &name), object);
        serde_json::from_value((*stored).clone()).unwrap_or(pod)
    }

    /// Deletes a pod; emits DELETED (carrying its last state). Returns whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .store()
            .delete(&pod_key(namespace, name))
            .is_some()
    }

    /// The stored pod as clients see it now (e.g. to check annotations the agent patched).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let obj = self.shared.store().get(&pod_key(namespace, name))?;
        serde_json::from_value((*obj).clone()).ok()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Forgets the event history (as an etcd compaction does) and ends every open watch, so
    /// every watching client's resumed watch gets `410 Gone` and has to relist.
    pub fn expire_watches(&self) {
        self.shared.store().expire_watches();
    }

    /// Every request so far, oldest first, as `METHOD /path?k=v&k=v` with the query decoded
    /// (`GET /api/v1/pods?limit=500&fieldSelector=spec.nodeName=node1`); PATCHes end with
    /// ` [content-type]`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store().requests()
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").field("url", &self.url()).finish()
    }
}

fn namespace_key(name: &str) -> Key {
    Key {
        kind: Kind::Namespace,
        namespace: String::new(),
        name: name.to_string(),
    }
}

fn pod_key(namespace: &str, name: &str) -> Key {
    Key {
        kind: Kind::Pod,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}
