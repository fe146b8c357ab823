use super::*;

fn pod_key(name: &str) -> Key {
    Key {
        kind: Kind::Pod,
        namespace: "ns".into(),
        name: name.into(),
    }
}

#[test]
fn put_assigns_server_fields_and_keeps_uid_on_update() {
    let mut s = Store::default();
    let a = s.put(pod_key("a"), json!({"metadata": {"labels": {"x": "1"}}}));
    assert_eq!(a["kind"], "Pod");
    assert_eq!(a["apiVersion"], "v1");
    assert_eq!(a["metadata"]["namespace"], "ns");
    assert_eq!(a["metadata"]["resourceVersion"], "1");
    assert!(a["metadata"]["creationTimestamp"].is_string());
    let uid = a["metadata"]["uid"].clone();
    let b = s.put(pod_key("a"), json!({"metadata": {"labels": {"x": "2"}}}));
    assert_eq!(b["metadata"]["uid"], uid);
    assert_eq!(b["metadata"]["resourceVersion"], "2");
}

#[test]
fn watch_replay_and_gone() {
    let mut s = Store::default();
    s.put(pod_key("a"), json!({}));
    s.put(pod_key("b"), json!({}));
    s.delete(&pod_key("a"));
    let sub = s.subscribe(Kind::Pod, WatchStart::After(1)).ok().unwrap();
    let types: Vec<_> = sub.replay.iter().map(|e| (e.ty, e.rv)).collect();
    assert_eq!(types, vec![(EventType::Added, 2), (EventType::Deleted, 3)]);
    let current = s.subscribe(Kind::Pod, WatchStart::Current).ok().unwrap();
    assert_eq!(current.replay.len(), 1);
    s.expire_watches();
    assert!(s.subscribe(Kind::Pod, WatchStart::After(3)).is_err());
    assert!(s.subscribe(Kind::Pod, WatchStart::After(s.rv())).is_ok());
}
