//! What each connected tunnel has been sent and how it answered, for `/debug/connections`.
//!
//! The xDS stream task is the only writer of its own entry; the status endpoint reads copies.
//! An entry disappears when its stream ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One connection as the status endpoint shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionStatus {
    pub id: u64,
    /// `node.id` of the first request (empty until it arrives).
    pub node_id: String,
    pub peer: String,
    /// Who authenticated: `token:<label>` or `certificate:<spiffe id>`.
    pub caller: String,
    /// The node a token caller's token is bound to (whose workloads' certificates it may
    /// obtain); `None` for certificate callers.
    pub bound_node: Option<String>,
    /// Unix seconds.
    pub connected_at: u64,
    /// Keyed by short type name (`Address`, `Authorization`).
    pub types: BTreeMap<String, TypeStatus>,
}

/// Per resource type on one connection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub type_url: String,
    /// `true` for a wildcard subscription, else the explicit names are counted in `subscribed_names`.
    pub wildcard: bool,
    pub subscribed_names: usize,
    /// Resources the client holds as far as we know.
    pub held: usize,
    pub responses_sent: u64,
    pub resources_sent: u64,
    pub removals_sent: u64,
    pub last_sent_nonce: Option<String>,
    pub last_acked_nonce: Option<String>,
    pub acks: u64,
    pub nack_count: u64,
    pub last_nack: Option<Nack>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Nack {
    pub nonce: String,
    pub message: String,
    /// Unix seconds.
    pub at: u64,
}

/// All live connections.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Mutex<ConnectionStatus>>>>,
}

impl Connections {
    /// Registers a new connection; the entry lives as long as the returned handle.
    pub(crate) fn register(self: &Arc<Self>, status: ConnectionStatus) -> ConnectionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Mutex::new(ConnectionStatus { id, ..status }));
        lock(&self.live).insert(id, entry.clone());
        ConnectionHandle {
            id,
            entry,
            registry: self.clone(),
        }
    }

    /// Copies of every live connection's status, oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionStatus> {
        let entries: Vec<_> = lock(&self.live).values().cloned().collect();
        entries.iter().map(|e| lock(e).clone()).collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's own entry; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct ConnectionHandle {
    id: u64,
    entry: Arc<Mutex<ConnectionStatus>>,
    registry: Arc<Connections>,
}

impl ConnectionHandle {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Runs `f` on this connection's status.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut ConnectionStatus) -> R) -> R {
        f(&mut lock(&self.entry))
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        lock(&self.registry.live).remove(&self.id);
    }
}

/// Status is plain data: a panic elsewhere while holding the lock leaves nothing to repair.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_handle() {
        let registry = Arc::new(Connections::default());
        let a = registry.register(ConnectionStatus {
            peer: "127.0.0.1:1".into(),
            ..Default::default()
        });
        let b = registry.register(ConnectionStatus::default());
        assert_ne!(a.id(), b.id());
        a.update(|s| s.node_id = "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local".into());
        let all = registry.snapshot();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].node_id, "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local");
        assert_eq!(all[0].peer, "127.0.0.1:1");
        drop(a);
        assert_eq!(registry.len(), 1);
        drop(b);
        assert!(registry.is_empty());
    }
}
