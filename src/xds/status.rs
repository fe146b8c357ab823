//! What the client has accepted and how the stream is doing, shared between the client task
//! and the rest of the tunnel (readiness, metrics, `/config_dump`).
//!
//! The accepted name → version maps live here rather than in the client because they are
//! both the debugging view and what a reconnect resumes from (`initial_resource_versions`).
//! The lock is a plain mutex: it is never held across an await, and holders only copy or
//! update small counters and one map.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::watch;

use super::ResourceType;

/// Counters for the metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdsStats {
    /// Whether a stream is established right now.
    pub connected: bool,
    /// Streams tried (successful or not) since start.
    pub attempts: u64,
    /// Streams established since start.
    pub connects: u64,
    pub addresses: TypeStats,
    pub authorizations: TypeStats,
    /// Responses of a type we never subscribed to (always NACKed).
    pub unknown_type_nacks: u64,
    /// How long the last successful apply held the store's write lock.
    pub last_apply_duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Resources of this type currently accepted.
    pub resources: usize,
    pub acks: u64,
    pub nacks: u64,
    /// When the last response of this type was accepted (ACKed) / rejected (NACKed).
    pub last_ack: Option<SystemTime>,
    pub last_nack: Option<SystemTime>,
}

/// Per-type protocol state.
#[derive(Debug, Default)]
pub(super) struct TypeStatus {
    /// Accepted resources: name → version. Removals delete entries.
    pub(super) versions: BTreeMap<String, String>,
    pub(super) last_nonce: String,
    pub(super) acks: u64,
    pub(super) nacks: u64,
    /// Resources skipped because this version does not understand them (unknown enums).
    pub(super) ignored: u64,
    pub(super) last_nack: Option<String>,
    pub(super) last_ack_at: Option<SystemTime>,
    pub(super) last_nack_at: Option<SystemTime>,
    /// The first response of this type on some stream (the whole state) was applied.
    pub(super) applied_once: bool,
}

#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) connected: bool,
    pub(super) attempts: u64,
    pub(super) connects: u64,
    pub(super) last_error: Option<String>,
    pub(super) last_apply: Option<Duration>,
    pub(super) unknown_type_nacks: u64,
    pub(super) addresses: TypeStatus,
    pub(super) authorizations: TypeStatus,
}

impl Status {
    pub(super) fn of(&self, kind: ResourceType) -> &TypeStatus {
        match kind {
            ResourceType::Address => &self.addresses,
            ResourceType::Authorization => &self.authorizations,
        }
    }

    pub(super) fn of_mut(&mut self, kind: ResourceType) -> &mut TypeStatus {
        match kind {
            ResourceType::Address => &mut self.addresses,
            ResourceType::Authorization => &mut self.authorizations,
        }
    }
}

/// The state shared by the client and its handles.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) address: String,
    pub(super) node_id: String,
    status: Mutex<Status>,
    synced: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new(address: String, node_id: String) -> Arc<Shared> {
        Arc::new(Shared {
            address,
            node_id,
            status: Mutex::new(Status::default()),
            synced: watch::Sender::new(false),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Status> {
        // Holders only update counters and maps; a panic mid-update leaves at worst a stale
        // counter, which is better than taking the whole client down with the poison.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Flips `synced` once every type has been applied; it never goes back to false.
    pub(super) fn update_synced(&self) {
        let done = {
            let s = self.lock();
            ResourceType::ALL.iter().all(|k| s.of(*k).applied_once)
        };
        if done && !*self.synced.borrow() {
            self.synced.send_replace(true);
        }
    }
}

/// A cheap, cloneable view of the client for the rest of the tunnel.
#[derive(Clone, Debug)]
pub struct XdsHandle {
    pub(super) shared: Arc<Shared>,
}

impl XdsHandle {
    /// True once the first response of both types was applied; stays true across
    /// reconnects, since the last good state keeps serving while the client reconnects.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.shared.synced.subscribe()
    }

    pub fn stats(&self) -> XdsStats {
        let s = self.shared.lock();
        let type_stats = |t: &TypeStatus| TypeStats {
            resources: t.versions.len(),
            acks: t.acks,
            nacks: t.nacks,
            last_ack: t.last_ack_at,
            last_nack: t.last_nack_at,
        };
        XdsStats {
            connected: s.connected,
            attempts: s.attempts,
            connects: s.connects,
            addresses: type_stats(&s.addresses),
            authorizations: type_stats(&s.authorizations),
            unknown_type_nacks: s.unknown_type_nacks,
            last_apply_duration: s.last_apply,
        }
    }

    /// The most recent reason a stream failed, in the words of `grpc::explain`; kept
    /// after a successful reconnect so a flapping control plane can still be diagnosed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// The `xds` section of `/config_dump`.
    pub fn snapshot(&self) -> serde_json::Value {
        let synced = *self.shared.synced.borrow();
        let s = self.shared.lock();
        let per_type = |t: &TypeStatus| {
            json!({
                "resources": t.versions.len(),
                "versions": t.versions,
                "last_nonce": t.last_nonce,
                "acks": t.acks,
                "nacks": t.nacks,
                "ignored": t.ignored,
                "last_nack": t.last_nack,
            })
        };
        let mut types = serde_json::Map::new();
        for kind in ResourceType::ALL {
            types.insert(kind.type_url().to_string(), per_type(s.of(kind)));
        }
        json!({
            "address": self.shared.address,
            "node_id": self.shared.node_id,
            "connected": s.connected,
            "synced": synced,
            "attempts": s.attempts,
            "connects": s.connects,
            "last_error": s.last_error,
            "last_apply_ms": s.last_apply.map(|d| d.as_secs_f64() * 1000.0),
            "unknown_type_nacks": s.unknown_type_nacks,
            "types": types,
        })
    }
}

#[cfg(test)]
mod tests;
