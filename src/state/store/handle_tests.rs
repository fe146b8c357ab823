//! The state handle's change signal: every write is announced, after its lock is released.

use super::*;
use crate::state::fixtures::workload;

#[test]
fn every_write_is_announced_and_reads_are_not() {
    let state = StateHandle::default();
    let mut changes = state.changes();
    assert!(!changes.has_changed().unwrap(), "nothing written yet");
    drop(state.read());
    assert!(!changes.has_changed().unwrap(), "a read is no change");

    state.write().insert_workload(workload("a", "10.0.0.1"));
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 1);

    let mut replaced = Store::default();
    replaced.insert_workload(workload("b", "10.0.0.2"));
    state.replace(replaced);
    assert_eq!(*changes.borrow_and_update(), 2, "a replace is a write");
    assert!(state.read().workload_by_uid("b").is_some());
}

/// A subscriber woken by the announcement can read at once, and sees the write: the lock is
/// released before the signal changes, and nothing is announced while it is held.
#[test]
fn the_announcement_follows_the_release_of_the_lock() {
    let state = StateHandle::default();
    let mut changes = state.changes();
    let lock = state.store.clone();
    let reader = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Fails (rather than waits forever) if the handle goes away unannounced.
        runtime
            .block_on(changes.changed())
            .expect("the write was announced");
        // `try_read`: a signal sent while the writer still held the lock could fail here
        // rather than wait.
        let store = lock.try_read().expect("the lock is free once announced");
        store.workload_by_uid("a").is_some()
    });
    {
        let mut store = state.write();
        store.insert_workload(workload("a", "10.0.0.1"));
        assert_eq!(
            *state.changes().borrow(),
            0,
            "announced while the lock is held"
        );
    }
    drop(state);
    assert!(reader.join().unwrap(), "the woken reader saw the write");
}
