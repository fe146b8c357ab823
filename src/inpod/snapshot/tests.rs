use super::*;

const NS_A: NetnsId = NetnsId::new(4, 100);
const NS_B: NetnsId = NetnsId::new(4, 200);

fn live_with(pods: &[(&str, NetnsId)]) -> SnapshotTracker {
    let mut t = SnapshotTracker::new();
    t.connected();
    for (uid, ns) in pods {
        assert_eq!(t.add(uid, *ns), AddDecision::Start);
    }
    assert_eq!(t.snapshot_sent(), Ok(vec![]));
    t
}

#[test]
fn ready_only_after_a_snapshot_on_the_current_connection() {
    let mut t = SnapshotTracker::new();
    assert!(!t.is_ready());
    t.connected();
    t.add("a", NS_A);
    assert!(!t.is_ready(), "adds alone do not make it ready");
    t.snapshot_sent().unwrap();
    assert!(t.is_ready());

    t.disconnected();
    assert!(!t.is_ready());
    assert_eq!(t.netns("a"), Some(NS_A), "pods survive a disconnect");
    t.connected();
    assert!(!t.is_ready(), "a new connection needs a new snapshot");
    t.add("a", NS_A);
    t.snapshot_sent().unwrap();
    assert!(t.is_ready());
}

#[test]
fn snapshot_drains_pods_it_does_not_name() {
    let mut t = live_with(&[
        ("a", NS_A),
        ("b", NS_B),
        ("c", NetnsId::new(4, 300)),
        ("d", NetnsId::new(4, 400)),
    ]);
    t.disconnected();
    t.connected();
    assert_eq!(t.add("a", NS_A), AddDecision::Unchanged);
    assert_eq!(t.keep("c"), Ok(KeepDecision::Kept));
    assert_eq!(t.keep("zz"), Ok(KeepDecision::Unknown));
    assert_eq!(t.add("new", NetnsId::new(9, 9)), AddDecision::Start);
    assert_eq!(t.snapshot_sent(), Ok(vec!["b".to_owned(), "d".to_owned()]));
    let mut pods: Vec<_> = t.pods().collect();
    pods.sort();
    assert_eq!(pods, ["a", "c", "new"]);
}

#[test]
fn snapshot_set_resets_per_connection() {
    let mut t = live_with(&[("a", NS_A), ("b", NS_B)]);
    // A connection that named "a" and "b" but broke before SnapshotSent...
    t.disconnected();
    t.connected();
    t.add("a", NS_A);
    t.keep("b").unwrap();
    t.disconnected();
    // ...does not count for the next one, which names only "a".
    t.connected();
    t.add("a", NS_A);
    assert_eq!(t.snapshot_sent(), Ok(vec!["b".to_owned()]));
}

#[test]
fn add_same_netns_is_idempotent_and_different_netns_replaces() {
    let mut t = live_with(&[("a", NS_A)]);
    assert_eq!(t.add("a", NS_A), AddDecision::Unchanged);
    assert_eq!(t.add("a", NS_B), AddDecision::Replace { old: NS_A });
    assert_eq!(t.netns("a"), Some(NS_B));
    assert_eq!(t.add("a", NS_B), AddDecision::Unchanged);
    // Same inode on another device is another namespace.
    assert_eq!(
        t.add("a", NetnsId::new(5, NS_B.inode)),
        AddDecision::Replace { old: NS_B }
    );
}

#[test]
fn del_and_forget() {
    let mut t = live_with(&[("a", NS_A), ("b", NS_B)]);
    assert_eq!(t.del("a"), DelDecision::Stop);
    assert_eq!(t.del("a"), DelDecision::Unknown);
    t.forget("b");
    assert_eq!(t.netns("b"), None);
    assert_eq!(t.pods().count(), 0);

    // A Del during the snapshot takes the pod out of both sets.
    let mut t = live_with(&[("a", NS_A)]);
    t.connected();
    t.add("a", NS_A);
    assert_eq!(t.del("a"), DelDecision::Stop);
    assert_eq!(t.snapshot_sent(), Ok(vec![]));
    assert_eq!(t.netns("a"), None);
}

#[test]
fn phase_errors() {
    let mut t = SnapshotTracker::new();
    assert_eq!(t.keep("a"), Err(SnapshotError::NotConnected));
    assert_eq!(t.snapshot_sent(), Err(SnapshotError::NotConnected));
    t.connected();
    t.snapshot_sent().unwrap();
    assert_eq!(t.snapshot_sent(), Err(SnapshotError::DuplicateSnapshot));
    assert!(t.is_ready(), "a duplicate snapshot does not unready");
    assert_eq!(
        t.keep("a"),
        Err(SnapshotError::KeepAfterSnapshot("a".into()))
    );
    // Adds and dels work in every phase.
    assert_eq!(t.add("a", NS_A), AddDecision::Start);
    t.disconnected();
    assert_eq!(t.del("a"), DelDecision::Stop);
}
