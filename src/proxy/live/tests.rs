//! The registry of live connections: registration, release on drop, revocation by a re-check,
//! the destination a re-check decides on; then the watcher with the real authorize step.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::FutureExt;

use super::*;
use crate::identity::Identity;
use crate::state::fixtures::{policy, workload};
use crate::state::{
    Policy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, StoreDelta,
    StringMatch,
};

/// An HBONE stream from `client` (its identity, `ip`) to `server`.
fn stream_from(client: &str, ip: &str) -> ConnectionInfo {
    ConnectionInfo {
        source_identity: Some(Identity::new("cluster.local", "default", client)),
        source_ip: ip.parse().unwrap(),
        destination: Arc::new(workload("server", "10.77.2.10")),
        destination_addr: "10.77.2.10:8080".parse().unwrap(),
    }
}

fn deny_reason(policy: &str) -> DenyReason {
    DenyReason::DenyPolicy {
        policy: policy.into(),
    }
}

/// Denies connections from `ip` (a DENY policy on that source, as far as the registry cares);
/// allows the rest with whatever an empty store allows them with.
fn deny_from(ip: &str) -> impl FnMut(&ConnectionInfo) -> Decision {
    let ip: IpAddr = ip.parse().unwrap();
    move |info| {
        if info.source_ip == ip {
            Decision::Deny(deny_reason("default/deny-client"))
        } else {
            authz::authorize(info, &Store::default())
        }
    }
}

/// `Some(reason)` if the registration was revoked, `None` if it is still live.
fn revocation(registration: &mut Registration) -> Option<DenyReason> {
    registration.revoked().now_or_never()
}

#[test]
fn a_registration_is_released_when_dropped() {
    let live = Arc::new(LiveConnections::new());
    let first = live.register(stream_from("client", "10.77.1.10"));
    let second = live.register(stream_from("client", "10.77.1.10"));
    let third = live.register(stream_from("client2", "10.77.1.11"));
    assert_eq!(live.len(), 3);
    drop(second);
    assert_eq!(live.len(), 2, "only the dropped one is released");
    drop(first);
    drop(third);
    assert!(live.is_empty(), "every registration released: {live:?}");
}

#[test]
fn a_recheck_revokes_only_what_it_denies() {
    let live = Arc::new(LiveConnections::new());
    let mut denied = live.register(stream_from("client", "10.77.1.10"));
    let mut allowed = live.register(stream_from("client2", "10.77.1.11"));
    assert_eq!(
        revocation(&mut denied),
        None,
        "nothing revoked before a re-check"
    );

    let pass = live.revoke_denied(deny_from("10.77.1.10"));
    assert_eq!(
        pass,
        Recheck {
            checked: 2,
            revoked: 1
        }
    );
    assert_eq!(
        revocation(&mut denied),
        Some(deny_reason("default/deny-client"))
    );
    assert_eq!(revocation(&mut allowed), None, "the allowed one stays live");
    // Once revoked, a connection is out of the registry: the next pass does not see it, and
    // a second revocation is never delivered.
    assert_eq!(live.len(), 1);
    assert_eq!(live.revoke_denied(deny_from("10.77.1.10")).checked, 1);
    assert_eq!(revocation(&mut denied), None, "revoked once only");

    drop(denied);
    assert_eq!(
        live.len(),
        1,
        "dropping a revoked one releases nothing else"
    );
    drop(allowed);
    assert!(live.is_empty());
}

#[test]
fn a_pass_skips_connections_that_ended() {
    let live = Arc::new(LiveConnections::new());
    let ended = live.register(stream_from("client", "10.77.1.10"));
    drop(ended);
    assert_eq!(
        live.revoke_denied(deny_from("10.77.1.10")),
        Recheck::default(),
        "a released connection is not decided again"
    );
}

#[test]
fn an_untracked_connection_registers_nothing_and_is_never_revoked() {
    let live = Arc::new(LiveConnections::new());
    let mut untracked = Registration::untracked();
    assert!(live.is_empty());
    assert_eq!(live.revoke_denied(deny_from("10.77.1.10")).checked, 0);
    assert_eq!(revocation(&mut untracked), None);
}

/// The re-check decides on the destination as the store holds it now (a workload update can
/// change which policies select it); a workload the store no longer has keeps its last
/// description.
#[test]
fn a_recheck_decides_on_the_current_destination() {
    let info = stream_from("client", "10.77.1.10");
    let mut store = Store::default();
    let mut updated = workload("server", "10.77.2.10");
    updated.service_account = "renamed".into();
    store.insert_workload(updated);
    let now = current(&info, &store);
    assert_eq!(now.destination.service_account, "renamed");
    assert_eq!(now.source_ip, info.source_ip);
    assert_eq!(now.destination_addr, info.destination_addr);

    let gone = current(&info, &Store::default());
    assert!(Arc::ptr_eq(&gone.destination, &info.destination));
}

// ------------------------------------------------- the watcher, with the real authorize step

/// A DENY policy in `default` (of `scope`) matching connections from `client`'s identity.
fn deny_client(name: &str, scope: PolicyScope) -> Policy {
    let from_client = PolicyMatch {
        principals: vec![StringMatch::Exact(
            "cluster.local/ns/default/sa/client".into(),
        )],
        ..PolicyMatch::default()
    };
    Policy {
        action: PolicyAction::Deny,
        scope,
        rules: vec![PolicyRule {
            clauses: vec![PolicyClause {
                matches: vec![from_client],
            }],
        }],
        ..policy("default", name)
    }
}

/// A state holding the `server` workload, a registry, and the watcher running on it.
fn watched() -> (
    StateHandle,
    Arc<LiveConnections>,
    tokio::task::JoinHandle<()>,
) {
    let state = StateHandle::default();
    state
        .write()
        .insert_workload(workload("server", "10.77.2.10"));
    let live = Arc::new(LiveConnections::new());
    let watcher = tokio::spawn(recheck_on_change(
        state.clone(),
        state.changes(),
        live.clone(),
    ));
    (state, live, watcher)
}

/// Registers `info` as the inbound paths do: decided and registered on one held snapshot.
fn admit(state: &StateHandle, live: &Arc<LiveConnections>, info: ConnectionInfo) -> Registration {
    let store = state.read();
    assert!(
        matches!(authz::authorize(&info, &store), Decision::Allow(_)),
        "admitted before the change"
    );
    live.register(info)
}

/// Waits for a revocation the watcher must deliver; the deadline only keeps a broken watcher
/// from hanging the test.
async fn revoked(registration: &mut Registration) -> DenyReason {
    tokio::time::timeout(Duration::from_secs(10), registration.revoked())
        .await
        .expect("the watcher revoked the connection")
}

#[tokio::test]
async fn a_deny_policy_written_later_revokes_the_live_connection_it_matches() {
    let (state, live, watcher) = watched();
    let mut from_client = admit(&state, &live, stream_from("client", "10.77.1.10"));
    let mut from_client2 = admit(&state, &live, stream_from("client2", "10.77.1.11"));

    state
        .write()
        .insert_policy(deny_client("deny-client", PolicyScope::Namespace));

    assert_eq!(
        revoked(&mut from_client).await,
        deny_reason("default/deny-client")
    );
    // Decided in the same pass, before anything was revoked.
    assert_eq!(revocation(&mut from_client2), None);
    assert_eq!(live.len(), 1);
    watcher.abort();
}

/// A workload update that makes the workload list a selector policy changes the outcome of
/// its live connections, though no policy changed.
#[tokio::test]
async fn a_workload_update_that_selects_a_deny_policy_revokes() {
    let (state, live, watcher) = watched();
    state
        .write()
        .insert_policy(deny_client("deny-selected", PolicyScope::WorkloadSelector));
    // Not selected yet: admitted.
    let mut from_client = admit(&state, &live, stream_from("client", "10.77.1.10"));

    let mut selected = workload("server", "10.77.2.10");
    selected.authorization_policies = vec!["default/deny-selected".into()];
    state.write().apply(StoreDelta {
        workloads: vec![selected],
        ..StoreDelta::default()
    });

    assert_eq!(
        revoked(&mut from_client).await,
        deny_reason("default/deny-selected")
    );
    assert!(live.is_empty());
    watcher.abort();
}
