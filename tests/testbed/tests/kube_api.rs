//! Proves the Kubernetes API stand-in against the real kube-rs 5 client and runtime watcher —
//! the same code the node agent and the CNI plugin run. Loopback only (no root), except the
//! last test, which serves inside a network namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use nodetunnel_testbed::kube_api::{KubeApi, PodBuilder};
use serde_json::json;

const REDIRECTION: &str = "ambient.istio.io/redirection";

/// Generous: these only bound a hang, they do not time anything.
const DEADLINE: Duration = Duration::from_secs(30);

/// A client built exactly as the plugin does: from a kubeconfig file.
async fn client_from_kubeconfig(kube: &KubeApi, dir: &Path) -> Client {
    let path = dir.join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn pod_on(ns: &str, name: &str, node: &str, ip: [u8; 4]) -> Pod {
    PodBuilder::new(ns, name)
        .node(node)
        .ip(IpAddr::V4(Ipv4Addr::from(ip)))
        .service_account("sa")
        .label("app", name)
        .build()
}

/// A JSON patch sent through the real client. (kube's `Patch::Json` needs its `jsonpatch`
/// feature, which the project's kube dependency does not enable; the request is the same.)
async fn json_patch(
    client: &Client,
    ns: &str,
    name: &str,
    ops: &serde_json::Value,
) -> Result<Pod, kube::Error> {
    let req = http::Request::patch(format!("/api/v1/namespaces/{ns}/pods/{name}?"))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(ops).unwrap())
        .unwrap();
    client.request::<Pod>(req).await
}

fn annotations(pod: &Pod) -> Vec<(String, String)> {
    pod.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// What the runtime watcher delivered, without the bookkeeping events; errors are kept (as
/// text) so a test can see that the watcher recovered from one.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Apply(String, Option<String>),
    Delete(String),
    InitApply(String),
    InitDone,
    Error(String),
}

/// The next interesting watcher event, or a panic after [`DEADLINE`] (never a hang).
async fn next_seen<S>(stream: &mut S) -> Seen
where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("no watcher event before the deadline")
            .expect("the watcher stream ended");
        let label = |p: &Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("version").cloned())
        };
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        return match ev {
            Ok(watcher::Event::Init) => continue,
            Ok(watcher::Event::InitApply(p)) => Seen::InitApply(name(&p)),
            Ok(watcher::Event::InitDone) => Seen::InitDone,
            Ok(watcher::Event::Apply(p)) => Seen::Apply(name(&p), label(&p)),
            Ok(watcher::Event::Delete(p)) => Seen::Delete(name(&p)),
            Err(e) => Seen::Error(e.to_string()),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_namespaces_and_pods() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    kube.put_namespace("ambient", &[("istio.io/dataplane-mode", "ambient")]);
    kube.put_namespace("plain", &[]);
    kube.put_pod(pod_on("ambient", "a1", "node1", [10, 0, 1, 2]));
    kube.put_pod(pod_on("ambient", "a2", "node2", [10, 0, 2, 2]));
    kube.put_pod(pod_on("plain", "p1", "node1", [10, 0, 1, 3]));
    let client = client_from_kubeconfig(&kube, dir.path()).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get("ambient").await.unwrap();
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(labels["istio.io/dataplane-mode"], "ambient");
    assert_eq!(labels["kubernetes.io/metadata.name"], "ambient");
    assert!(ns.metadata.uid.is_some_and(|u| !u.is_empty()));
    assert!(ns.metadata.creation_timestamp.is_some());
    let ambient = namespaces
        .list(&ListParams::default().labels("istio.io/dataplane-mode=ambient"))
        .await
        .unwrap();
    let names: Vec<_> = ambient
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["ambient"]);
    let not_ambient = namespaces
        .list(&ListParams::default().labels("!istio.io/dataplane-mode"))
        .await
        .unwrap();
    assert_eq!(not_ambient.items.len(), 1);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "ambient");
    let a1 = pods.get("a1").await.unwrap();
    assert_eq!(
        a1.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node1")
    );
    assert_eq!(
        a1.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some("sa")
    );
    let status = a1.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.0.1.2"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // All namespaces, filtered by node, paged as the watcher does (`limit` is ignored).
    let all: Api<Pod> = Api::all(client.clone());
    let on_node1 = all
        .list(&ListParams::default().fields("spec.nodeName=node1").limit(1))
        .await
        .unwrap();
    let mut names: Vec<_> = on_node1
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a1", "p1"]);
    assert!(on_node1.metadata.continue_.is_none());
    let rv: u64 = on_node1.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(rv, kube.resource_version());
    let both = all
        .list(&ListParams::default().fields("spec.nodeName=node1,metadata.namespace=plain"))
        .await
        .unwrap();
    assert_eq!(both.items.len(), 1);
    let by_set = all
        .list(&ListParams::default().labels("app in (a2,p1),app notin (p1)"))
        .await
        .unwrap();
    assert_eq!(by_set.items.len(), 1);

    // The server's own endpoints answer too.
    client.apiserver_version().await.unwrap();

    let log = kube.requests();
    assert!(
        log.iter().any(|l| l.starts_with("GET /api/v1/pods?")
            && l.contains("fieldSelector=spec.nodeName=node1")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_an_api_error_404() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    match pods.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected a 404 API error, got {other:?}"),
    }
    assert!(pods.get_opt("missing").await.unwrap().is_none());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(matches!(
        namespaces.get("missing").await,
        Err(kube::Error::Api(s)) if s.code == 404
    ));
    // Patching a missing pod is a 404 too.
    let patch = Patch::Merge(json!({"metadata": {"annotations": {REDIRECTION: "enabled"}}}));
    assert!(matches!(
        pods.patch("missing", &PatchParams::default(), &patch).await,
        Err(kube::Error::Api(s)) if s.code == 404
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_its_nodes_pods_added_modified_deleted_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    kube.put_pod(pod_on("ns", "before", "node1", [10, 0, 1, 1]));
    kube.put_pod(pod_on("ns", "elsewhere", "node2", [10, 0, 2, 1]));
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let api: Api<Pod> = Api::all(client.clone());

    // The runtime watcher, configured as the agent does.
    let mut w = watcher(
        api.clone(),
        watcher::Config::default().fields("spec.nodeName=node1"),
    )
    .boxed();
    assert_eq!(next_seen(&mut w).await, Seen::InitApply("before".into()));
    assert_eq!(next_seen(&mut w).await, Seen::InitDone);

    // A raw watch as well, to see the exact event types.
    let rv = kube.resource_version().to_string();
    let mut raw = api
        .watch(&WatchParams::default().fields("spec.nodeName=node1"), &rv)
        .await
        .unwrap()
        .boxed();

    kube.put_pod(pod_on("ns", "other-node", "node2", [10, 0, 2, 9]));
    let mut p = pod_on("ns", "p", "node1", [10, 0, 1, 9]);
    kube.put_pod(p.clone());
    p.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("version".into(), "v2".into());
    kube.put_pod(p);
    assert!(kube.delete_pod("ns", "p"));
    assert!(!kube.delete_pod("ns", "p"));

    assert_eq!(next_seen(&mut w).await, Seen::Apply("p".into(), None));
    assert_eq!(
        next_seen(&mut w).await,
        Seen::Apply("p".into(), Some("v2".into()))
    );
    assert_eq!(next_seen(&mut w).await, Seen::Delete("p".into()));

    let mut types = Vec::new();
    while types.len() < 3 {
        let ev = tokio::time::timeout(DEADLINE, raw.next())
            .await
            .expect("raw watch event before the deadline")
            .expect("raw watch ended")
            .unwrap();
        match ev {
            WatchEvent::Added(p) => types.push(format!("ADDED {}", p.metadata.name.unwrap())),
            WatchEvent::Modified(p) => types.push(format!("MODIFIED {}", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => types.push(format!("DELETED {}", p.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(types, ["ADDED p", "MODIFIED p", "DELETED p"]);

    // A pod moving onto the node enters the selection (ADDED), moving off leaves it (DELETED).
    let mut mover = pod_on("ns", "mover", "node2", [10, 0, 2, 7]);
    kube.put_pod(mover.clone());
    mover.spec.as_mut().unwrap().node_name = Some("node1".into());
    kube.put_pod(mover.clone());
    assert_eq!(next_seen(&mut w).await, Seen::Apply("mover".into(), None));
    mover.spec.as_mut().unwrap().node_name = Some("node3".into());
    kube.put_pod(mover);
    assert_eq!(next_seen(&mut w).await, Seen::Delete("mover".into()));

    let log = kube.requests();
    assert!(
        log.iter()
            .any(|l| l.contains("watch=true") && l.contains("allowWatchBookmarks=true")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_add_and_remove_the_redirection_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    kube.put_pod(pod_on("ns", "p", "node1", [10, 0, 1, 9]));
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let mut w = watcher(pods.clone(), watcher::Config::default()).boxed();
    assert_eq!(next_seen(&mut w).await, Seen::InitApply("p".into()));
    assert_eq!(next_seen(&mut w).await, Seen::InitDone);
    let annotated = |kube: &KubeApi| annotations(&kube.pod("ns", "p").unwrap());

    // Merge patch adds it.
    let merge = Patch::Merge(json!({"metadata": {"annotations": {REDIRECTION: "enabled"}}}));
    let out = pods
        .patch("p", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(
        annotations(&out),
        [(REDIRECTION.to_string(), "enabled".to_string())]
    );
    assert_eq!(annotated(&kube), annotations(&out));
    assert_eq!(next_seen(&mut w).await, Seen::Apply("p".into(), None));
    let rv_after_merge = kube.resource_version();

    // The same merge again is a no-op: no new version, no event.
    pods.patch("p", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(kube.resource_version(), rv_after_merge);

    // A JSON patch with an escaped pointer removes it.
    let remove = json!([
        {"op": "test", "path": "/metadata/annotations/ambient.istio.io~1redirection", "value": "enabled"},
        {"op": "remove", "path": "/metadata/annotations/ambient.istio.io~1redirection"},
    ]);
    let out = json_patch(&client, "ns", "p", &remove).await.unwrap();
    assert!(annotations(&out).is_empty());
    assert!(annotated(&kube).is_empty());
    assert_eq!(next_seen(&mut w).await, Seen::Apply("p".into(), None));

    // Removing it again is invalid (422) and changes nothing.
    let rv = kube.resource_version();
    match json_patch(&client, "ns", "p", &remove).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{s:?}"),
        other => panic!("expected 422, got {other:?}"),
    }
    assert_eq!(kube.resource_version(), rv);

    // Strategic merge and server-side apply (as the agent might use) set it again.
    let strategic =
        Patch::Strategic(json!({"metadata": {"annotations": {REDIRECTION: "enabled"}}}));
    pods.patch("p", &PatchParams::default(), &strategic)
        .await
        .unwrap();
    assert_eq!(next_seen(&mut w).await, Seen::Apply("p".into(), None));
    let apply = Patch::Apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"extra": "1"}},
    }));
    let out = pods
        .patch("p", &PatchParams::apply("nodetunnel").force(), &apply)
        .await
        .unwrap();
    assert_eq!(annotations(&out).len(), 2);
    assert_eq!(next_seen(&mut w).await, Seen::Apply("p".into(), None));

    // The /status subresource patches the same object.
    let status = Patch::Merge(json!({"status": {"phase": "Succeeded"}}));
    let out = pods
        .patch_status("p", &PatchParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(out.status.unwrap().phase.as_deref(), Some("Succeeded"));

    // A stale resourceVersion in a patch is a conflict.
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}));
    assert!(matches!(
        pods.patch("p", &PatchParams::default(), &stale).await,
        Err(kube::Error::Api(s)) if s.code == 409
    ));
    // Renaming through a patch is refused.
    let rename = Patch::Merge(json!({"metadata": {"name": "q"}}));
    assert!(matches!(
        pods.patch("p", &PatchParams::default(), &rename).await,
        Err(kube::Error::Api(s)) if s.code == 400
    ));
    // A patch that makes the object invalid is refused.
    let broken = Patch::Merge(json!({"metadata": {"annotations": {"n": 5}}}));
    assert!(matches!(
        pods.patch("p", &PatchParams::default(), &broken).await,
        Err(kube::Error::Api(s)) if s.code == 422
    ));

    let log = kube.requests();
    for ct in [
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ] {
        assert!(
            log.iter()
                .any(|l| l.starts_with("PATCH ") && l.contains(ct)),
            "{ct}: {log:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_old_resource_version_makes_the_watcher_relist() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    kube.put_pod(pod_on("ns", "first", "node1", [10, 0, 1, 1]));
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let api: Api<Pod> = Api::all(client.clone());
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(next_seen(&mut w).await, Seen::InitApply("first".into()));
    assert_eq!(next_seen(&mut w).await, Seen::InitDone);
    let lists_before = kube
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/pods") && !l.contains("watch=true"))
        .count();

    // Compaction: the open watch ends, and resuming from any version seen so far is 410 Gone.
    kube.expire_watches();
    kube.put_pod(pod_on("ns", "second", "node1", [10, 0, 1, 2]));

    // The watcher reports the 410, relists (seeing both pods) and carries on watching.
    let mut seen = Vec::new();
    while seen.last() != Some(&Seen::InitDone) {
        seen.push(next_seen(&mut w).await);
    }
    assert!(
        matches!(&seen[0], Seen::Error(e) if e.contains("410") || e.contains("too old")),
        "{seen:?}"
    );
    assert_eq!(
        seen[1..],
        [
            Seen::InitApply("first".into()),
            Seen::InitApply("second".into()),
            Seen::InitDone
        ]
    );
    let lists_after = kube
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET /api/v1/pods") && !l.contains("watch=true"))
        .count();
    assert_eq!(lists_after, lists_before + 1);
    kube.put_pod(pod_on("ns", "third", "node1", [10, 0, 1, 3]));
    assert_eq!(next_seen(&mut w).await, Seen::Apply("third".into(), None));

    // A raw watch from a compacted version gets one ERROR event with a 410 Status.
    let mut raw = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(DEADLINE, raw.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watch_ends_initial_events_with_a_bookmark() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    kube.put_pod(pod_on("ns", "a", "node1", [10, 0, 1, 1]));
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let api: Api<Pod> = Api::all(client);
    let mut w = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(next_seen(&mut w).await, Seen::InitApply("a".into()));
    assert_eq!(next_seen(&mut w).await, Seen::InitDone);
    kube.put_pod(pod_on("ns", "b", "node1", [10, 0, 1, 2]));
    assert_eq!(next_seen(&mut w).await, Seen::Apply("b".into(), None));
}

#[test]
fn serves_inside_a_network_namespace() {
    if !nodetunnel_testbed::namespaces_available("serves_inside_a_network_namespace") {
        return;
    }
    let name = format!("{}-kube", nodetunnel_testbed::netns::unique_prefix());
    let ns = nodetunnel_testbed::Netns::create(&name).unwrap();
    let kube = KubeApi::start(Some(&ns), Ipv4Addr::LOCALHOST).unwrap();
    kube.put_namespace("demo", &[]);
    // Not reachable from this (the host's) namespace…
    assert!(std::net::TcpStream::connect(kube.addr()).is_err());
    // …but from inside, with the real client.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let labels = ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let kubeconfig = Kubeconfig::read_from(&path).unwrap();
            let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
            let client = Client::try_from(config).unwrap();
            Api::<Namespace>::all(client)
                .get("demo")
                .await
                .unwrap()
                .metadata
                .labels
                .unwrap_or_default()
        })
    });
    assert_eq!(labels["kubernetes.io/metadata.name"], "demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_ends_open_watches() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(None, Ipv4Addr::LOCALHOST).unwrap();
    let client = client_from_kubeconfig(&kube, dir.path()).await;
    let api: Api<Pod> = Api::all(client);
    let mut raw = api
        .watch(
            &WatchParams::default(),
            &kube.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    // Join the server thread off the async workers.
    tokio::task::spawn_blocking(move || drop(kube))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, raw.next()).await.unwrap() {
            None | Some(Err(_)) => break,
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(other)) => panic!("unexpected event {other:?}"),
        }
    }
}
