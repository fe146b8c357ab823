use super::*;

#[test]
fn synced_needs_both_types_and_stays_true() {
    let shared = Shared::new("https://cp:15012".into(), "ztunnel~1".into());
    let handle = XdsHandle {
        shared: shared.clone(),
    };
    let rx = handle.synced();
    shared.lock().addresses.applied_once = true;
    shared.update_synced();
    assert!(!*rx.borrow());
    shared.lock().authorizations.applied_once = true;
    shared.update_synced();
    assert!(*rx.borrow());
    // A later subscriber sees it too, and a reconnect does not undo it.
    shared.lock().connected = false;
    assert!(*handle.synced().borrow());
}

#[test]
fn snapshot_and_stats_show_accepted_versions() {
    let shared = Shared::new("https://cp:15012".into(), "ztunnel~1".into());
    let handle = XdsHandle {
        shared: shared.clone(),
    };
    {
        let mut s = shared.lock();
        s.addresses.versions.insert("uid-a".into(), "7".into());
        s.addresses.acks = 2;
        s.authorizations.nacks = 1;
        s.authorizations.last_nack = Some("bad".into());
        s.last_error = Some("cannot reach".into());
    }
    let v = handle.snapshot();
    let a = &v["types"]["type.googleapis.com/istio.workload.Address"];
    assert_eq!(a["versions"]["uid-a"], "7");
    assert_eq!(a["resources"], 1);
    assert_eq!(a["acks"], 2);
    let p = &v["types"]["type.googleapis.com/istio.security.Authorization"];
    assert_eq!(p["last_nack"], "bad");
    assert_eq!(v["address"], "https://cp:15012");
    assert_eq!(v["node_id"], "ztunnel~1");
    assert_eq!(v["last_error"], "cannot reach");
    assert_eq!(v["synced"], false);
    let stats = handle.stats();
    assert_eq!(stats.addresses.resources, 1);
    assert_eq!(stats.authorizations.nacks, 1);
    assert_eq!(handle.last_error().as_deref(), Some("cannot reach"));
}
