//! The stand-in's state: stored objects (as JSON, so patches and selectors work on what the
//! client sees), one global resourceVersion counter, the event history that watches replay, and
//! the broadcast that feeds live watches.
//!
//! Every change happens under one lock and is broadcast while the lock is held, so a watch that
//! subscribes under the same lock sees the history and then the live events without a gap or a
//! duplicate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// How many events the history keeps; an older resourceVersion gets `410 Gone`.
const HISTORY_LIMIT: usize = 10_000;

/// Capacity of the live-event broadcast; a watch that falls this far behind is ended (its client
/// resumes from the last version it saw, which the history still holds).
const BROADCAST_CAPACITY: usize = 4096;

/// The kinds the stand-in serves (core/v1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
        }
    }

    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Namespace => "NamespaceList",
            Kind::Pod => "PodList",
        }
    }

    /// The plural resource name used in paths and in `Status.details.kind`.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
        }
    }
}

/// Identifies one stored object; `namespace` is empty for cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `old` is the object before a MODIFIED, so a selector-filtered watch can turn an
/// object that leaves its selector into a DELETED (and one that enters into an ADDED), as the
/// real server's watch cache does.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: Key,
    pub ty: EventType,
    pub object: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// What live watches receive.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Event(Arc<Event>),
    /// End every open watch (`KubeApi::expire_watches`).
    CloseWatches,
}

/// Where a new watch starts.
pub enum WatchStart {
    /// `resourceVersion` absent or `"0"`: the current objects as synthetic ADDED events.
    Current,
    /// Every event after this version.
    After(u64),
}

/// The history no longer reaches back to the requested version.
#[derive(Debug)]
pub struct Gone {
    pub requested: u64,
    pub oldest: u64,
}

/// A new watch's starting material: events to replay, then the live receiver.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Broadcast>,
    /// The store's resourceVersion when the watch began (for bookmarks).
    pub rv: u64,
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// A watch from a version below this gets 410 Gone.
    compacted: u64,
    uids: u64,
    tx: broadcast::Sender<Broadcast>,
    requests: Vec<String>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            uids: 0,
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            requests: Vec::new(),
        }
    }
}

/// `metadata.creationTimestamp` for a new object, in the API's RFC 3339 form.
fn now_timestamp() -> Value {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts);
    serde_json::to_value(t).unwrap_or(Value::Null)
}

impl Store {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn log_request(&mut self, line: String) {
        self.requests.push(line);
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.clone()
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// The objects of `kind` (in `namespace` when given), in key order.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.objects
            .iter()
            .filter(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }

    /// Creates or replaces the object at `key` with `object`, filling in what the server owns:
    /// `apiVersion`, `kind`, `metadata.name/namespace`, `uid` and `creationTimestamp` (kept
    /// from the stored object on update, assigned on create, unless `object` sets them) and a
    /// fresh `resourceVersion`. Emits ADDED or MODIFIED; returns the stored object.
    pub fn put(&mut self, key: Key, mut object: Value) -> Arc<Value> {
        let old = self.objects.get(&key).cloned();
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = json!("v1");
        object["kind"] = json!(key.kind.name());
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        let inherited = |field: &str| -> Option<Value> {
            old.as_ref()
                .and_then(|o| o["metadata"].get(field))
                .filter(|v| !v.is_null())
                .cloned()
        };
        let uid = object["metadata"]
            .get("uid")
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
            .or_else(|| inherited("uid"))
            .unwrap_or_else(|| json!(self.next_uid()));
        let created = object["metadata"]
            .get("creationTimestamp")
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| inherited("creationTimestamp"))
            .unwrap_or_else(now_timestamp);
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.name);
        if key.namespace.is_empty() {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
        } else {
            meta["namespace"] = json!(key.namespace);
        }
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        self.commit(key, object, old)
    }

    /// Stores an already complete object (a patch result) with a fresh resourceVersion.
    pub fn replace(&mut self, key: Key, object: Value) -> Arc<Value> {
        let old = self.objects.get(&key).cloned();
        self.commit(key, object, old)
    }

    fn commit(&mut self, key: Key, mut object: Value, old: Option<Arc<Value>>) -> Arc<Value> {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(object);
        self.objects.insert(key.clone(), object.clone());
        let ty = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv: self.rv,
            key,
            ty,
            object: object.clone(),
            old,
        });
        object
    }

    /// Removes the object at `key`; the DELETED event carries its last state with a fresh
    /// resourceVersion. `None` when there was no such object.
    pub fn delete(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.record(Event {
            rv: self.rv,
            key: key.clone(),
            ty: EventType::Deleted,
            object: last.clone(),
            old: Some(old),
        });
        Some(last)
    }

    fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Broadcast::Event(event));
    }

    /// Forgets the history (as an etcd compaction does) and ends every open watch: a client
    /// resuming from any version it has seen gets 410 Gone and must list again. The counter is
    /// bumped so the version a relist returns is valid to watch from.
    pub fn expire_watches(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
        self.history.clear();
        let _ = self.tx.send(Broadcast::CloseWatches);
    }

    /// Subscribes a watch of `kind` starting at `start`; the caller filters by scope and
    /// selectors.
    pub fn subscribe(&self, kind: Kind, start: WatchStart) -> Result<Subscription, Gone> {
        let replay = match start {
            WatchStart::Current => self
                .objects
                .iter()
                .filter(|(k, _)| k.kind == kind)
                .map(|(k, v)| {
                    let rv = v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(self.rv);
                    Arc::new(Event {
                        rv,
                        key: k.clone(),
                        ty: EventType::Added,
                        object: v.clone(),
                        old: None,
                    })
                })
                .collect(),
            WatchStart::After(from) => {
                if from < self.compacted {
                    return Err(Gone {
                        requested: from,
                        oldest: self.compacted,
                    });
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > from && e.key.kind == kind)
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            replay,
            live: self.tx.subscribe(),
            rv: self.rv,
        })
    }
}

#[cfg(test)]
mod tests;
