//! The node's traffic as a graph, for the live view (`admin/live_view.rs`): who talks to whom
//! through this tunnel, how often, how much, and what was denied.
//!
//! **Cost on the data path.** Every connection already builds its access record once; the
//! record opens its edge here when it starts ([`TrafficGraph::open`]: a shared lock and one map
//! lookup for parties already seen) and closes it when it finishes ([`EdgeHandle::finish`]: the
//! edge's own lock). Nothing happens per byte: bytes are added when a connection closes, so an
//! open connection shows as a live count, its bytes once it ends.
//!
//! **Bounded under hostile traffic.** An edge is keyed by who talks to whom
//! ([`EdgeKey`]), so a crowd of connections between the same parties is one edge. Edges with no
//! live connection are kept for [`RECENT_WINDOW`] after their last one closed; the table holds
//! at most [`EDGE_CAP`] edges. When it is full, the closed edges seen longest ago go first (a
//! tenth of the table at a time, so eviction is not a scan per connection); when every edge is
//! live, a new party's connections are counted as untracked instead of growing the table (and
//! the table is not scanned again for a second).
//!
//! One graph per process ([`TrafficGraph::shared`]), like the process's DNS resolver: one
//! tunnel serves one node, and its graph is that node's traffic whichever pod's listener took
//! the connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::authz::DenyReason;
use crate::identity::Identity;
use crate::metrics::ConnectionLabels;

/// How long an edge without live connections stays in the graph after its last one closed.
pub const RECENT_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The most edges the graph holds at once.
pub const EDGE_CAP: usize = 1_000;

/// One end of an edge: the most specific name the tunnel knows for it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Party {
    /// A workload of the mesh, `<namespace>/<workload name>` as the `istio_tcp_*` labels name it.
    Workload(String),
    /// A service hostname, when no workload was chosen behind it.
    Service(String),
    /// A SPIFFE identity without a known workload (an HBONE peer whose address names none).
    Identity(String),
    /// Only an address is known (a plaintext client, an endpoint outside the mesh).
    Address(IpAddr),
}

impl Party {
    /// The name the graph shows and the JSON uses as the node's id. Unique across kinds: a
    /// workload has a `/`, an identity is a `spiffe://` URI, a service is a DNS name, an
    /// address is an IP.
    pub fn id(&self) -> String {
        match self {
            Party::Workload(name) | Party::Service(name) | Party::Identity(name) => name.clone(),
            Party::Address(ip) => ip.to_string(),
        }
    }

    /// `workload`, `service`, `identity` or `address`.
    pub fn kind(&self) -> &'static str {
        match self {
            Party::Workload(_) => "workload",
            Party::Service(_) => "service",
            Party::Identity(_) => "identity",
            Party::Address(_) => "address",
        }
    }
}

/// Who talks to whom, how, and seen from which side: the edge a connection counts on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    pub source: Party,
    pub destination: Party,
    /// The service hostname the client addressed (outbound) or reached (inbound); empty if none.
    pub service: String,
    /// `HBONE` or `TCP` (plaintext), as in the access log.
    pub protocol: &'static str,
    /// `outbound` or `inbound`, as in the access log.
    pub direction: &'static str,
}

/// What the access record knows about a connection, borrowed to build its [`EdgeKey`].
pub struct Ends<'a> {
    pub direction: &'static str,
    pub protocol: &'static str,
    pub src: SocketAddr,
    pub dst: Option<SocketAddr>,
    pub original_dst: Option<SocketAddr>,
    pub src_identity: Option<&'a Identity>,
    pub dst_identity: Option<&'a Identity>,
    pub labels: &'a ConnectionLabels,
}

impl EdgeKey {
    pub fn of(ends: &Ends<'_>) -> EdgeKey {
        let l = ends.labels;
        let source = if !l.source_workload.is_empty() {
            Party::Workload(format!(
                "{}/{}",
                l.source_workload_namespace, l.source_workload
            ))
        } else if let Some(id) = ends.src_identity {
            Party::Identity(id.to_string())
        } else {
            Party::Address(ends.src.ip())
        };
        let destination = if !l.destination_workload.is_empty() {
            Party::Workload(format!(
                "{}/{}",
                l.destination_workload_namespace, l.destination_workload
            ))
        } else if !l.destination_service.is_empty() {
            Party::Service(l.destination_service.clone())
        } else if let Some(id) = ends.dst_identity {
            Party::Identity(id.to_string())
        } else {
            match ends.dst.or(ends.original_dst) {
                Some(addr) => Party::Address(addr.ip()),
                // Failed before any destination was known (no original destination).
                None => Party::Service("unknown".to_string()),
            }
        };
        EdgeKey {
            source,
            destination,
            service: l.destination_service.clone(),
            protocol: ends.protocol,
            direction: ends.direction,
        }
    }
}

/// The graph: edges by key, bounded (see the module doc).
pub struct TrafficGraph {
    window: Duration,
    cap: usize,
    table: RwLock<Table>,
    /// Connections counted on no edge because the table was full of live edges.
    untracked: AtomicU64,
}

type Edges = HashMap<EdgeKey, Arc<Edge>>;

#[derive(Default)]
struct Table {
    edges: Edges,
    /// Set when a full table had no closed edge to evict: until then, new parties are counted
    /// as untracked without another scan, so a flood against a table of live edges costs a
    /// lookup per connection, not a pass over the table.
    no_room_until: Option<Instant>,
}

/// How long a full table of live edges is taken as full before it is scanned again.
const NO_ROOM_RETRY: Duration = Duration::from_secs(1);

/// One edge's identities (fixed when it is first seen) and counters.
#[derive(Debug)]
struct Edge {
    key: EdgeKey,
    source_identity: Option<String>,
    destination_identity: Option<String>,
    stats: Mutex<EdgeStats>,
}

/// The numbers of one edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeStats {
    /// Connections open now.
    pub live: u64,
    /// Connections started on this edge since it was first seen (live ones included).
    pub total: u64,
    /// Closed connections that ended in an error (denials included).
    pub failed: u64,
    /// Bytes from source to destination, of closed connections.
    pub bytes_sent: u64,
    /// Bytes from destination to source, of closed connections.
    pub bytes_received: u64,
    /// Connections a policy refused, or revoked while live.
    pub denied: u64,
    /// The most recent denial.
    pub last_denial: Option<Denial>,
    /// The access log's `flag` of the most recent failed connection (`peer_refused`,
    /// `policy_denied`, `drain_cut`, ...).
    pub last_failure: Option<&'static str>,
    /// When a connection last started or ended on this edge.
    pub last_seen: Instant,
}

/// Which policy denied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `namespace/name` of the deciding DENY policy; empty when no ALLOW policy matched.
    pub policy: String,
    /// `deny_policy` or `no_allow_match` (the `reason` label of the denial metric).
    pub reason: &'static str,
    /// The reason in words, as the access log writes it.
    pub detail: String,
}

impl Denial {
    pub fn of(reason: &DenyReason) -> Denial {
        Denial {
            policy: reason.policy().to_string(),
            reason: reason.kind(),
            detail: reason.to_string(),
        }
    }
}

/// How a connection ended, as its edge counts it.
#[derive(Clone, Debug, Default)]
pub struct Outcome<'a> {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The access log's `flag` when the connection failed; `None` when it ended cleanly.
    pub failure: Option<&'static str>,
    pub denial: Option<&'a DenyReason>,
}

/// The failure a connection dropped without [`EdgeHandle::finish`] counts with: the access
/// log's flag for a connection cut at a drain deadline (`access::DRAIN_CUT_FLAG`).
pub const CUT_FAILURE: &str = "drain_cut";

/// One edge with its numbers, as [`TrafficGraph::snapshot`] copies it out.
#[derive(Clone, Debug)]
pub struct EdgeView {
    pub key: EdgeKey,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
    pub stats: EdgeStats,
}

/// The whole graph at one moment.
#[derive(Clone, Debug)]
pub struct GraphView {
    /// Sorted by key, so the page and the JSON keep a stable order between refreshes.
    pub edges: Vec<EdgeView>,
    pub untracked: u64,
    pub window: Duration,
    pub cap: usize,
    /// The instant the snapshot was taken (ages are measured from it).
    pub taken: Instant,
}

impl TrafficGraph {
    pub fn new(window: Duration, cap: usize) -> TrafficGraph {
        TrafficGraph {
            window,
            cap: cap.max(1),
            table: RwLock::new(Table::default()),
            untracked: AtomicU64::new(0),
        }
    }

    /// The process's graph: [`RECENT_WINDOW`], [`EDGE_CAP`].
    pub fn shared() -> &'static TrafficGraph {
        // The crate's unit tests share this one graph across threads, and some hold thousands
        // of live records between distinct parties at once (`access` tests): a larger cap there
        // keeps them from crowding out the edge another test looks for. Still bounded.
        const SHARED_CAP: usize = if cfg!(test) { 1 << 16 } else { EDGE_CAP };
        static SHARED: OnceLock<TrafficGraph> = OnceLock::new();
        SHARED.get_or_init(|| TrafficGraph::new(RECENT_WINDOW, SHARED_CAP))
    }

    /// Counts a connection that starts between `ends`; its handle closes it. `None` when the
    /// table is full of live edges (the connection is counted as untracked).
    pub fn open(&self, ends: &Ends<'_>) -> Option<EdgeHandle> {
        // The key is built before any lock is taken: its strings are the only allocations.
        let key = EdgeKey::of(ends);
        let now = Instant::now();
        // The common case, parties already in the table: a shared lock, so connections that
        // start on different workers do not queue behind each other. The connection is counted
        // while the lock is held, so eviction (which takes it exclusively) never removes an
        // edge that is about to have a live connection.
        if let Some(edge) = self.read().edges.get(&key) {
            return Some(EdgeHandle::start(edge.clone(), now));
        }
        let mut table = self.write();
        if let Some(edge) = table.edges.get(&key) {
            // Another connection between the same parties inserted it meanwhile.
            return Some(EdgeHandle::start(edge.clone(), now));
        }
        if table.edges.len() >= self.cap && table.no_room_until.is_none_or(|t| now >= t) {
            self.make_room(&mut table.edges, now);
            table.no_room_until = (table.edges.len() >= self.cap).then(|| now + NO_ROOM_RETRY);
        }
        if table.edges.len() >= self.cap {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let edge = Arc::new(Edge {
            key: key.clone(),
            source_identity: ends.src_identity.map(ToString::to_string),
            destination_identity: ends.dst_identity.map(ToString::to_string),
            stats: Mutex::new(EdgeStats::new(now)),
        });
        table.edges.insert(key, edge.clone());
        Some(EdgeHandle::start(edge, now))
    }

    /// Every edge still in the window as of `now`, sorted by key. Drops the expired ones.
    pub fn snapshot(&self, now: Instant) -> GraphView {
        let edges: Vec<Arc<Edge>> = {
            let mut table = self.write();
            self.expire(&mut table.edges, now);
            table.edges.values().cloned().collect()
        };
        let mut edges: Vec<EdgeView> = edges
            .into_iter()
            .map(|edge| EdgeView {
                key: edge.key.clone(),
                source_identity: edge.source_identity.clone(),
                destination_identity: edge.destination_identity.clone(),
                stats: edge.lock().clone(),
            })
            .collect();
        edges.sort_by(|a, b| a.key.cmp(&b.key));
        GraphView {
            edges,
            untracked: self.untracked.load(Ordering::Relaxed),
            window: self.window,
            cap: self.cap,
            taken: now,
        }
    }

    /// Drops the closed edges whose last connection ended more than the window before `now`.
    fn expire(&self, table: &mut Edges, now: Instant) {
        table.retain(|_, edge| {
            let stats = edge.lock();
            stats.live > 0 || now.saturating_duration_since(stats.last_seen) <= self.window
        });
    }

    /// Frees room in a full table: expired edges first, then the closed edges seen longest
    /// ago, a tenth of the cap at a time (so a flood of new parties evicts in batches rather
    /// than scanning the table for every connection).
    fn make_room(&self, table: &mut Edges, now: Instant) {
        self.expire(table, now);
        if table.len() < self.cap {
            return;
        }
        let mut closed: Vec<(Instant, EdgeKey)> = table
            .iter()
            .filter_map(|(key, edge)| {
                let stats = edge.lock();
                (stats.live == 0).then(|| (stats.last_seen, key.clone()))
            })
            .collect();
        let batch = (self.cap / 10).max(1).min(closed.len());
        if batch == 0 {
            return;
        }
        closed.select_nth_unstable_by_key(batch - 1, |(seen, _)| *seen);
        for (_, key) in closed.into_iter().take(batch) {
            table.remove(&key);
        }
    }

    // Each critical section is whole map operations and counter updates: a panic cannot
    // leave the table torn, so a poisoned lock is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl EdgeStats {
    fn new(now: Instant) -> EdgeStats {
        EdgeStats {
            live: 0,
            total: 0,
            failed: 0,
            bytes_sent: 0,
            bytes_received: 0,
            denied: 0,
            last_denial: None,
            last_failure: None,
            last_seen: now,
        }
    }
}

impl Edge {
    fn lock(&self) -> MutexGuard<'_, EdgeStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A live connection's place on its edge. [`finish`](Self::finish) adds how it ended;
/// dropped without it (a connection cut at a drain deadline), the connection counts as failed
/// with its bytes unknown.
#[derive(Debug)]
pub struct EdgeHandle {
    edge: Arc<Edge>,
    closed: bool,
}

impl EdgeHandle {
    /// Counts a connection starting on `edge` now.
    fn start(edge: Arc<Edge>, now: Instant) -> EdgeHandle {
        {
            let mut stats = edge.lock();
            stats.live += 1;
            stats.total += 1;
            stats.last_seen = now;
        }
        EdgeHandle {
            edge,
            closed: false,
        }
    }

    pub fn finish(mut self, outcome: Outcome<'_>) {
        self.closed = true;
        let mut stats = self.edge.lock();
        stats.live = stats.live.saturating_sub(1);
        stats.bytes_sent = stats.bytes_sent.saturating_add(outcome.bytes_sent);
        stats.bytes_received = stats.bytes_received.saturating_add(outcome.bytes_received);
        if let Some(flag) = outcome.failure {
            stats.failed += 1;
            stats.last_failure = Some(flag);
        }
        if let Some(reason) = outcome.denial {
            stats.denied += 1;
            let denial = Denial::of(reason);
            if stats.last_denial.as_ref() != Some(&denial) {
                stats.last_denial = Some(denial);
            }
        }
        stats.last_seen = Instant::now();
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let mut stats = self.edge.lock();
        stats.live = stats.live.saturating_sub(1);
        stats.failed += 1;
        stats.last_failure = Some(CUT_FAILURE);
        stats.last_seen = Instant::now();
    }
}

#[cfg(test)]
mod tests;
