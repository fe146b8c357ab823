//! Which pods the tunnel should run, as ZDS requests arrive: a pure state machine, no I/O.
//!
//! On each new connection the agent replays every pod it knows (Add with a netns, or Keep
//! without one), then sends SnapshotSent; pods the tunnel runs that the snapshot did not name
//! are drained. The tunnel is ready only once a snapshot has completed on the current
//! connection. Between connections it keeps its pods but is not ready.

use std::collections::{HashMap, HashSet};

pub use nodetunnel_base::netns::NetnsId;

/// What to do about an Add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddDecision {
    /// A new pod: start its proxy.
    Start,
    /// Already running in this namespace: nothing to do, ack success.
    Unchanged,
    /// Running in another namespace (the pod sandbox was recreated): drain the old proxy,
    /// start a new one.
    Replace { old: NetnsId },
}

/// What to do about a Keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepDecision {
    /// The pod runs; it will survive the snapshot.
    Kept,
    /// No proxy for this pod; nothing to keep.
    Unknown,
}

/// What to do about a Del.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelDecision {
    /// Drain the pod's proxy.
    Stop,
    /// Not running; ack success (deletes are idempotent).
    Unknown,
}

/// A request that does not fit the connection's phase; ack it with this as the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("keep for {0} after the snapshot")]
    KeepAfterSnapshot(String),
    #[error("snapshot already sent on this connection")]
    DuplicateSnapshot,
    #[error("no connection")]
    NotConnected,
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Disconnected,
    /// Collecting the uids the snapshot names.
    Snapshot(HashSet<String>),
    Live,
}

#[derive(Debug, Default)]
pub struct SnapshotTracker {
    /// Pods with a proxy, and the namespace it runs in.
    pods: HashMap<String, NetnsId>,
    phase: Phase,
}

impl SnapshotTracker {
    pub fn new() -> SnapshotTracker {
        SnapshotTracker::default()
    }

    /// A new connection: not ready, an empty snapshot begins.
    pub fn connected(&mut self) {
        self.phase = Phase::Snapshot(HashSet::new());
    }

    /// The connection is gone: pods stay, readiness goes.
    pub fn disconnected(&mut self) {
        self.phase = Phase::Disconnected;
    }

    /// Ready once a snapshot completed on the current connection.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }

    /// Records the pod as running in `netns`.
    pub fn add(&mut self, uid: &str, netns: NetnsId) -> AddDecision {
        self.note(uid);
        match self.pods.insert(uid.to_owned(), netns) {
            None => AddDecision::Start,
            Some(old) if old == netns => AddDecision::Unchanged,
            Some(old) => AddDecision::Replace { old },
        }
    }

    /// Only valid during a snapshot.
    pub fn keep(&mut self, uid: &str) -> Result<KeepDecision, SnapshotError> {
        match self.phase {
            Phase::Snapshot(_) => self.note(uid),
            Phase::Live => return Err(SnapshotError::KeepAfterSnapshot(uid.to_owned())),
            Phase::Disconnected => return Err(SnapshotError::NotConnected),
        }
        if self.pods.contains_key(uid) {
            Ok(KeepDecision::Kept)
        } else {
            Ok(KeepDecision::Unknown)
        }
    }

    pub fn del(&mut self, uid: &str) -> DelDecision {
        if let Phase::Snapshot(named) = &mut self.phase {
            named.remove(uid);
        }
        match self.pods.remove(uid) {
            Some(_) => DelDecision::Stop,
            None => DelDecision::Unknown,
        }
    }

    /// Ends the snapshot; returns the pods to drain (sorted), now forgotten.
    pub fn snapshot_sent(&mut self) -> Result<Vec<String>, SnapshotError> {
        let named = match &mut self.phase {
            Phase::Snapshot(named) => std::mem::take(named),
            Phase::Live => return Err(SnapshotError::DuplicateSnapshot),
            Phase::Disconnected => return Err(SnapshotError::NotConnected),
        };
        self.phase = Phase::Live;
        let mut drain: Vec<String> = (self.pods.keys())
            .filter(|uid| !named.contains(*uid))
            .cloned()
            .collect();
        drain.sort();
        for uid in &drain {
            self.pods.remove(uid);
        }
        Ok(drain)
    }

    /// Drops a pod without a request (its proxy failed to start, or it was drained).
    pub fn forget(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// The namespace a pod's proxy runs in.
    #[cfg(test)]
    pub fn netns(&self, uid: &str) -> Option<NetnsId> {
        self.pods.get(uid).copied()
    }

    /// Uids of running pods, in no particular order.
    #[cfg(test)]
    pub fn pods(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    fn note(&mut self, uid: &str) {
        if let Phase::Snapshot(named) = &mut self.phase {
            named.insert(uid.to_owned());
        }
    }
}

#[cfg(test)]
mod tests;
