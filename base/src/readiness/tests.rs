use tokio::sync::watch;

use super::Readiness;

#[test]
fn ready_only_when_every_condition_holds_and_names_the_first_missing() {
    let (installed, installed_rx) = watch::channel(false);
    let (synced, synced_rx) = watch::channel(false);
    let readiness = Readiness::new()
        .require(installed_rx, "not installed")
        .require(synced_rx, "not synced");
    assert_eq!(readiness.missing(), Some("not installed"));
    synced.send_replace(true);
    assert_eq!(readiness.missing(), Some("not installed"));
    installed.send_replace(true);
    assert_eq!(readiness.missing(), None);
    assert!(readiness.is_ready());
    // Flags are read, not copied: a clone sees later changes too.
    let clone = readiness.clone();
    synced.send_replace(false);
    assert_eq!(clone.missing(), Some("not synced"));
    assert!(!readiness.is_ready());
}

#[test]
fn an_owned_condition_starts_unmet_and_a_dropped_owner_keeps_the_last_value() {
    let mut readiness = Readiness::new();
    assert!(readiness.is_ready());
    let started = readiness.condition("starting");
    assert_eq!(readiness.missing(), Some("starting"));
    started.send_replace(true);
    assert!(readiness.is_ready());
    drop(started);
    assert!(readiness.is_ready());
}
