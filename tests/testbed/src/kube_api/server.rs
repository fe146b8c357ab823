//! The HTTP side of the stand-in: routing, list/get/patch, and streaming watches.
//!
//! Request shapes follow what kube-rs 5 sends (kube-core `request.rs` / `params.rs`): lists as
//! `GET …?limit=500&fieldSelector=…&labelSelector=…`, watches as
//! `GET …?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true[&sendInitialEvents=true&resourceVersionMatch=NotOlderThan]&resourceVersion=N`,
//! and it reads a watch body as newline-delimited `{"type":…,"object":…}` (kube-client
//! `request_events`). `limit`/`continue` are ignored: a list is always one complete page with no
//! continue token, which a paging client accepts.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use nodetunnel_base::accept;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::patch::{self, PatchError, PatchKind};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Broadcast, Event, EventType, Key, Kind, Store, WatchStart};

pub type Body = BoxBody<Bytes, Infallible>;

/// The largest PATCH body read.
const MAX_BODY: usize = 4 << 20;

/// A watch without `timeoutSeconds` ends after this (the real server picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// State shared by the server and the [`KubeApi`](super::KubeApi) handle.
pub struct Shared {
    store: Mutex<Store>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Shared {
    pub fn new(bookmark_interval: Duration) -> Self {
        Self {
            store: Mutex::new(Store::default()),
            bookmark_interval,
        }
    }

    /// The store; a panic elsewhere while holding the lock must not wedge the server.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accepts connections until `shutdown` fires; each connection is served on its own task.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) {
    let accepting = accept::serve(listener, "kube-api", |stream, _| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            // A client hanging up mid-request is its business, not a server error.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    });
    tokio::select! {
        _ = shutdown => {}
        () = accepting => {}
    }
}

enum Route {
    ApiVersions,
    Version,
    ResourceList,
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        key: Key,
    },
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r = match segs.as_slice() {
        ["api"] => Route::ApiVersions,
        ["version"] => Route::Version,
        ["api", "v1"] => Route::ResourceList,
        ["api", "v1", "namespaces"] => Route::Collection {
            kind: Kind::Namespace,
            namespace: None,
        },
        ["api", "v1", "namespaces", name] | ["api", "v1", "namespaces", name, "status"] => {
            Route::Object {
                key: Key {
                    kind: Kind::Namespace,
                    namespace: String::new(),
                    name: name.to_string(),
                },
            }
        }
        ["api", "v1", "pods"] => Route::Collection {
            kind: Kind::Pod,
            namespace: None,
        },
        ["api", "v1", "namespaces", ns, "pods"] => Route::Collection {
            kind: Kind::Pod,
            namespace: Some(ns.to_string()),
        },
        ["api", "v1", "namespaces", ns, "pods", name]
        | ["api", "v1", "namespaces", ns, "pods", name, "status"] => Route::Object {
            key: Key {
                kind: Kind::Pod,
                namespace: ns.to_string(),
                name: name.to_string(),
            },
        },
        _ => return None,
    };
    (!segs.iter().any(|s| s.is_empty())).then_some(r)
}

/// A `metav1.Status` failure, as the real server sends for every error.
pub fn status(code: StatusCode, reason: &str, message: &str, details: Option<(&Key,)>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some((key,)) = details {
        s["details"] = json!({"name": key.name, "kind": key.kind.resource()});
    }
    s
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status(code, reason, message, None))
}

fn not_found(key: &Key) -> Response<Body> {
    let message = format!("{} \"{}\" not found", key.kind.resource(), key.name);
    json_response(
        StatusCode::NOT_FOUND,
        &status(StatusCode::NOT_FOUND, "NotFound", &message, Some((key,))),
    )
}

fn method_not_allowed(method: &Method, path: &str) -> Response<Body> {
    failure(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("the stand-in does not serve {method} on {path}"),
    )
}

/// The query as decoded `(key, value)` pairs.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query());
    let mut line = format!("{method} {path}");
    if !query.is_empty() {
        let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line = format!("{line}?{}", q.join("&"));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if method == Method::PATCH {
        line = format!(
            "{line} [{}]",
            content_type.as_deref().unwrap_or("no content-type")
        );
    }
    shared.store().log_request(line);

    let Some(r) = route(&path) else {
        return Ok(failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    let get = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match (r, &method) {
        (Route::ApiVersions, &Method::GET) => get(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        (Route::Version, &Method::GET) => get(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-nodetunnel-testbed",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "",
            "platform": "linux/amd64",
        })),
        (Route::ResourceList, &Method::GET) => get(json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
                 "verbs": ["get", "list", "watch", "patch"]},
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list", "watch", "patch"]},
                {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "patch"]},
            ],
        })),
        (Route::Collection { kind, namespace }, &Method::GET) => {
            Ok(collection(&shared, kind, namespace, &query))
        }
        (Route::Object { key }, &Method::GET) => Ok(match shared.store().get(&key) {
            Some(obj) => json_response(StatusCode::OK, &obj),
            None => not_found(&key),
        }),
        (Route::Object { key }, &Method::PATCH) => {
            let Some(kind) = content_type
                .as_deref()
                .and_then(PatchKind::from_content_type)
            else {
                return Ok(failure(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format ({}); accepted: \
                         application/json-patch+json, application/merge-patch+json, \
                         application/strategic-merge-patch+json, application/apply-patch+yaml",
                        content_type.as_deref().unwrap_or("none")
                    ),
                ));
            };
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(failure(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("reading the patch body: {e}"),
                    ))
                }
            };
            Ok(patch_object(&shared, &key, kind, &body))
        }
        _ => Ok(method_not_allowed(&method, &path)),
    }
}

/// The parameters of a list or watch.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, key: &Key, object: &Value) -> bool {
        key.kind == self.kind
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| key.namespace == *ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// How `event` looks through this filter: an object entering the selection is ADDED, one
    /// leaving it is DELETED, one outside it is not shown.
    fn translate(&self, event: &Event) -> Option<EventType> {
        let now = self.matches(&event.key, &event.object);
        match event.ty {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => now.then_some(EventType::Deleted),
            EventType::Modified => {
                let before = event
                    .old
                    .as_ref()
                    .is_some_and(|o| self.matches(&event.key, o));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn flag(query: &[(String, String)], name: &str) -> bool {
    matches!(param(query, name), Some("true" | "1"))
}

fn collection(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    query: &[(String, String)],
) -> Response<Body> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid {what}: {e}"),
        )
    };
    let labels = match LabelSelector::parse(param(query, "labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad("labelSelector", &e),
    };
    let fields = match FieldSelector::parse(param(query, "fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad("fieldSelector", &e),
    };
    let filter = Filter {
        kind,
        namespace,
        labels,
        fields,
    };
    if flag(query, "watch") {
        return watch(shared, filter, query);
    }
    let store = shared.store();
    let items: Vec<Value> = store
        .list(kind, filter.namespace.as_deref())
        .into_iter()
        .filter(|o| filter.labels.matches(o) && filter.fields.matches(o))
        .map(|o| (*o).clone())
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind.list_kind(),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": store.rv().to_string()},
            "items": items,
        }),
    )
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": "v1", "metadata": meta}),
    )
}

fn watch(shared: &Arc<Shared>, filter: Filter, query: &[(String, String)]) -> Response<Body> {
    let initial_events = flag(query, "sendInitialEvents");
    let bookmarks = flag(query, "allowWatchBookmarks");
    let timeout = match param(query, "timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH_TIMEOUT,
        Some(s) => match s.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(e) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid timeoutSeconds {s:?}: {e}"),
                )
            }
        },
    };
    let start = match param(query, "resourceVersion") {
        None | Some("") | Some("0") => WatchStart::Current,
        _ if initial_events => WatchStart::Current,
        Some(s) => match s.parse::<u64>() {
            Ok(rv) => WatchStart::After(rv),
            Err(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resourceVersion {s:?}: not a number this server issued"),
                )
            }
        },
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let sub = shared.store().subscribe(filter.kind, start);
    match sub {
        Err(gone) => {
            // The real server answers 200 and sends one ERROR event with a 410 Status.
            let message = format!(
                "too old resource version: {} ({})",
                gone.requested, gone.oldest
            );
            let line = event_line(
                "ERROR",
                &status(StatusCode::GONE, "Expired", &message, None),
            );
            tokio::spawn(async move {
                let _ = tx.send(line).await;
            });
        }
        Ok(sub) => {
            let interval = shared.bookmark_interval;
            tokio::spawn(async move {
                let mut last_rv = sub.rv;
                for e in &sub.replay {
                    if let Some(ty) = filter.translate(e) {
                        if tx.send(event_line(ty.as_str(), &e.object)).await.is_err() {
                            return;
                        }
                    }
                }
                if initial_events && tx.send(bookmark(filter.kind, last_rv, true)).await.is_err() {
                    return;
                }
                let mut live = sub.live;
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    let line = tokio::select! {
                        _ = &mut deadline => return,
                        _ = tx.closed() => return,
                        _ = ticks.tick(), if bookmarks => bookmark(filter.kind, last_rv, false),
                        msg = live.recv() => match msg {
                            Ok(Broadcast::Event(e)) => {
                                last_rv = e.rv;
                                match filter.translate(&e) {
                                    Some(ty) => event_line(ty.as_str(), &e.object),
                                    None => continue,
                                }
                            }
                            // Expired by the test, lagged too far, or the server is going away:
                            // end the stream; the client resumes (or relists on 410).
                            Ok(Broadcast::CloseWatches)
                            | Err(broadcast::error::RecvError::Lagged(_))
                            | Err(broadcast::error::RecvError::Closed) => return,
                        },
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let body = StreamBody::new(stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Applies a PATCH to the stored object under the lock; the object is unchanged on any error.
fn patch_object(shared: &Arc<Shared>, key: &Key, kind: PatchKind, body: &[u8]) -> Response<Body> {
    let mut store = shared.store();
    let Some(current) = store.get(key) else {
        return not_found(key);
    };
    let mut result = match patch::apply(kind, &current, body) {
        Ok(v) => v,
        Err(e @ PatchError::NotJson(_)) => {
            return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())
        }
        Err(e) => {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!("{} \"{}\" is invalid: {e}", key.kind.resource(), key.name),
            )
        }
    };
    let invalid = |why: String| {
        json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!("{} \"{}\" is invalid: {why}", key.kind.resource(), key.name),
                Some((key,)),
            ),
        )
    };
    if !result.is_object() || !result["metadata"].is_object() {
        return invalid("the patched object has no metadata".to_string());
    }
    for field in ["apiVersion", "kind"] {
        if result[field] != current[field] {
            return invalid(format!("{field} may not be changed by a patch"));
        }
    }
    for field in ["name", "namespace"] {
        if result["metadata"][field] != current["metadata"][field] {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "metadata.{field} of the patched object does not match the one in the URL"
                ),
            );
        }
    }
    for field in ["uid", "creationTimestamp"] {
        if result["metadata"][field] != current["metadata"][field] {
            return invalid(format!("metadata.{field}: field is immutable"));
        }
    }
    // Optimistic concurrency: a patch that names a resourceVersion must name the current one.
    let named_rv = &result["metadata"]["resourceVersion"];
    if !named_rv.is_null() && *named_rv != current["metadata"]["resourceVersion"] {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please \
             apply your changes to the latest version and try again",
            key.kind.resource(),
            key.name
        );
        return json_response(
            StatusCode::CONFLICT,
            &status(StatusCode::CONFLICT, "Conflict", &message, Some((key,))),
        );
    }
    let typed = match key.kind {
        Kind::Pod => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(result.clone()).map(drop)
        }
        Kind::Namespace => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(result.clone())
                .map(drop)
        }
    };
    if let Err(e) = typed {
        return invalid(format!("not a valid {}: {e}", key.kind.name()));
    }
    if result == *current {
        // A no-op patch neither bumps the version nor emits an event (as the real server).
        return json_response(StatusCode::OK, &current);
    }
    if let Some(meta) = result["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let stored = store.replace(key.clone(), result);
    json_response(StatusCode::OK, &stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/api"), Some(Route::ApiVersions)));
        assert!(matches!(
            route("/api/v1/pods"),
            Some(Route::Collection {
                kind: Kind::Pod,
                namespace: None
            })
        ));
        assert!(matches!(
            route("/api/v1/namespaces/a/pods/b/status"),
            Some(Route::Object { key }) if key.name == "b" && key.namespace == "a"
        ));
        assert!(matches!(
            route("/api/v1/namespaces/a"),
            Some(Route::Object { key }) if key.kind == Kind::Namespace && key.name == "a"
        ));
        assert!(route("/api/v1/namespaces/a/services").is_none());
        assert!(route("/apis/apps/v1").is_none());
        assert!(route("/api/v1/namespaces//pods").is_none());
    }
}
