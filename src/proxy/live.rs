//! Live inbound connections, kept so that a change of the state decides them again.
//!
//! The next connection always sees the newest policies; this module makes the open ones see
//! them too (as ztunnel's connection manager does). Each admitted inbound connection (one
//! HBONE stream, or one plaintext connection) is registered with what the authorize step saw
//! ([`ConnectionInfo`]) and holds a [`Registration`]; dropping it (the connection ended, however
//! it ended) takes the connection out of the registry.
//!
//! **No missed change.** A connection registers while it still holds the store snapshot it
//! was authorized on (`ProxyInputs::authorize`). A writer cannot write while that snapshot is
//! held, so either the connection was authorized on the new state, or its registration
//! happened before the write — and the re-check that every write triggers ([`recheck_on_change`], which
//! looks at the registry only after the write's lock is released) finds it.
//!
//! **Re-check.** After every store write, [`recheck_on_change`] re-authorizes each registered connection
//! on the new store and revokes the denied ones: their [`Registration::revoked`] resolves
//! with the denial, and the connection's own task closes it (resets the HBONE stream, or the
//! plaintext connection) and logs it. Both the registry and the watcher are per listener group
//! (the dedicated tunnel, or one pod in shared mode): a pod's connections are re-checked with
//! its own scope and go away with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, watch};

use crate::authz::{self, ConnectionInfo, Decision, DenyReason};
use crate::state::{StateHandle, Store};

/// The live inbound connections of one listener group.
#[derive(Debug, Default)]
pub struct LiveConnections {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    /// Shared with re-check passes, which copy the list out instead of holding the lock while
    /// they decide.
    info: Arc<ConnectionInfo>,
    revoke: oneshot::Sender<DenyReason>,
}

/// What one re-check pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    /// Connections decided again.
    pub checked: usize,
    /// Of those, denied now and told to close.
    pub revoked: usize,
}

impl LiveConnections {
    pub fn new() -> LiveConnections {
        LiveConnections::default()
    }

    /// Registers an admitted connection. Call while the snapshot it was authorized on is still
    /// held (see the module doc); the connection is tracked until the registration is dropped.
    pub fn register(self: &Arc<Self>, info: ConnectionInfo) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = oneshot::channel();
        self.lock().insert(
            id,
            Entry {
                info: Arc::new(info),
                revoke,
            },
        );
        Registration {
            slot: Some((self.clone(), id)),
            revoked: Some(revoked),
        }
    }

    /// Connections registered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Decides every registered connection again with `decide` and revokes each one it
    /// denies (its [`Registration::revoked`] resolves with the reason). The registry is locked
    /// only to copy the list and to revoke, never while deciding, so connections keep opening
    /// and closing during a pass; one that ends during the pass is simply skipped.
    pub fn revoke_denied(&self, mut decide: impl FnMut(&ConnectionInfo) -> Decision) -> Recheck {
        let snapshot: Vec<(u64, Arc<ConnectionInfo>)> = self
            .lock()
            .iter()
            .map(|(id, entry)| (*id, entry.info.clone()))
            .collect();
        let denied: Vec<(u64, DenyReason)> = snapshot
            .iter()
            .filter_map(|(id, info)| match decide(info) {
                Decision::Allow(_) => None,
                Decision::Deny(reason) => Some((*id, reason)),
            })
            .collect();
        let mut revoked = 0;
        let mut entries = self.lock();
        for (id, reason) in denied {
            if let Some(entry) = entries.remove(&id) {
                // A connection whose task already dropped its receiver is ending anyway.
                let _ = entry.revoke.send(reason);
                revoked += 1;
            }
        }
        Recheck {
            checked: snapshot.len(),
            revoked,
        }
    }

    fn release(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Every critical section is a single map operation: a panic cannot leave it torn.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in the registry; dropping it takes the connection out.
#[derive(Debug)]
pub struct Registration {
    /// `None` for an untracked connection (re-checks switched off).
    slot: Option<(Arc<LiveConnections>, u64)>,
    /// `None` once the revocation was delivered (or for an untracked connection).
    revoked: Option<oneshot::Receiver<DenyReason>>,
}

impl Registration {
    /// A connection that is never re-checked: [`revoked`](Self::revoked) never resolves.
    pub fn untracked() -> Registration {
        Registration {
            slot: None,
            revoked: None,
        }
    }

    /// Resolves with the denial when a re-check revokes the connection; never otherwise (in
    /// particular not when the registry goes away, which is no reason to cut a connection).
    pub async fn revoked(&mut self) -> DenyReason {
        if let Some(receiver) = self.revoked.as_mut() {
            let outcome = receiver.await;
            self.revoked = None;
            if let Ok(reason) = outcome {
                return reason;
            }
        }
        std::future::pending().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((registry, id)) = self.slot.take() {
            registry.release(id);
        }
    }
}

/// Re-checks `live` after every write to `state` until the task is dropped; logs each pass
/// that revoked something. `changes` must be taken from `state` before the group's first
/// connection registers (so the first write after it is never missed): the caller subscribes,
/// then spawns this.
pub async fn recheck_on_change(
    state: StateHandle,
    mut changes: watch::Receiver<u64>,
    live: Arc<LiveConnections>,
) {
    while changes.changed().await.is_ok() {
        // Writes that landed while the last pass ran are coalesced into this one.
        changes.borrow_and_update();
        let pass = {
            let store = state.read();
            live.revoke_denied(|info| authz::authorize(&current(info, &store), &store))
        };
        if pass.revoked > 0 {
            tracing::info!(
                checked = pass.checked,
                revoked = pass.revoked,
                "the mesh state changed: live connections it now denies are closed"
            );
        } else {
            tracing::debug!(
                checked = pass.checked,
                "the mesh state changed: every live connection is still allowed"
            );
        }
    }
}

/// `info` as of `store`: the destination workload as the store holds it now, since the policies
/// that select a workload travel with the workload. A workload that is gone keeps its last
/// known description (its namespace's and the mesh's policies still apply): removing a
/// workload is not a policy decision, and the listeners that serve it have their own drain.
fn current(info: &ConnectionInfo, store: &Store) -> ConnectionInfo {
    let mut info = info.clone();
    if let Some(now) = store.workload_by_uid(&info.destination.uid) {
        info.destination = now;
    }
    info
}

#[cfg(test)]
mod tests;
