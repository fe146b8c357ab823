//! The live view on the admin port: `GET /live` (a self-contained HTML page) draws this node's
//! traffic as a graph from `GET /live/graph.json`, which it fetches again every two seconds.
//!
//! The JSON is built from the process's traffic graph (`proxy/traffic.rs`) and the pods this
//! tunnel serves. Its field names are stable (documented on each type below; the README's
//! "Live view" names them too): tools and the browser test read them, and the page reads only
//! them. `schema` changes if a field ever changes meaning.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::AdminState;
use crate::proxy::traffic::{EdgeView, GraphView, Party, TrafficGraph};
use crate::proxy::Scope;
use crate::state::{Store, Workload};

#[cfg(test)]
mod tests;

/// The page. One file, no external scripts, styles or fonts: the admin port is usually reached
/// through a port-forward on a node without internet access.
pub(super) const PAGE: &str = include_str!("live_view.html");

/// The value of `schema`.
pub const SCHEMA: &str = "nodetunnel.live/v1";

/// The most local workloads listed in dedicated mode without a workload filter (a tunnel that
/// serves its whole node): the page stays readable, and the answer small.
const LOCAL_LIST_CAP: usize = 500;

/// `GET /live/graph.json`.
#[derive(Debug, Serialize)]
pub struct LiveGraph {
    /// `nodetunnel.live/v1`.
    pub schema: &'static str,
    /// When this answer was made (RFC 3339, UTC).
    pub generated_at: String,
    /// How long an edge without live connections stays after its last one closed.
    pub window_seconds: u64,
    /// The most edges kept at once.
    pub edge_cap: usize,
    /// Connections counted on no edge because the table was full of live edges.
    pub untracked_connections: u64,
    /// Local pods first, then peers; each sorted by id.
    pub nodes: Vec<Node>,
    /// Sorted by (source, destination, service, protocol, direction).
    pub edges: Vec<Edge>,
}

/// One workload, service, identity or address in the graph.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Node {
    /// `<namespace>/<workload>`, a service hostname, a SPIFFE id, or an IP address.
    pub id: String,
    /// `workload`, `service`, `identity` or `address`.
    pub kind: &'static str,
    /// True for a pod this tunnel serves (enrolled here, or the dedicated workload).
    pub local: bool,
    /// The SPIFFE identity, when known.
    pub identity: Option<String>,
}

/// Traffic from one party to another, over one protocol, as one side of this tunnel saw it.
#[derive(Debug, Serialize)]
pub struct Edge {
    /// Unique in the answer: `<direction>|<protocol>|<source>|<destination>|<service>`.
    pub id: String,
    /// A node id.
    pub source: String,
    /// A node id.
    pub destination: String,
    /// The service hostname addressed or reached, when there is one.
    pub service: Option<String>,
    /// `HBONE` (mutual TLS between tunnels) or `TCP` (plaintext).
    pub protocol: &'static str,
    /// `outbound` (a local pod is the client) or `inbound` (a local pod is the server).
    pub direction: &'static str,
    pub live_connections: u64,
    /// Every connection since the edge was first seen, live ones included.
    pub total_connections: u64,
    /// Closed connections that ended in an error, denied ones included.
    pub failed_connections: u64,
    /// Source → destination, closed connections only.
    pub bytes_sent: u64,
    /// Destination → source, closed connections only.
    pub bytes_received: u64,
    /// Connections a policy refused or revoked.
    pub denied_connections: u64,
    /// The most recent denial, when there was one.
    pub denied_by: Option<DeniedBy>,
    /// The access log's `flag` of the most recent failed connection (`peer_refused`,
    /// `upstream_connect_failed`, `policy_denied`, `drain_cut`, ...), when there was one.
    pub last_failure: Option<&'static str>,
    /// When a connection last started or ended here (RFC 3339, UTC).
    pub last_seen: String,
    pub last_seen_seconds_ago: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DeniedBy {
    /// `namespace/name` of the deciding DENY policy; empty when no ALLOW policy matched.
    pub policy: String,
    /// `deny_policy` or `no_allow_match`.
    pub reason: &'static str,
    /// In words, as the access log says it.
    pub detail: String,
}

/// A pod this tunnel serves, as the graph names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalPod {
    pub id: String,
    pub identity: Option<String>,
}

/// The answer for the admin state's tunnel, now.
pub(super) fn graph_json(admin: &AdminState) -> LiveGraph {
    // The pod table's lock and the store's are taken one after the other, never together.
    let enrolled: Vec<(String, String)> = {
        let pods = admin.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .map(|p| (p.workload.clone(), p.identity.clone()))
            .collect()
    };
    let local = {
        let store = admin.state.read();
        let mut local = enrolled_pods(&store, &enrolled);
        if let Some(scope) = admin.local_scope.as_ref() {
            local.extend(served_workloads(&store, scope));
        }
        local
    };
    build(
        &TrafficGraph::shared().snapshot(Instant::now()),
        &local,
        SystemTime::now(),
    )
}

/// Shared mode's enrolled pods (`<namespace>/<pod name>` and identity from the pod table),
/// named as the traffic labels name them: by the store's workload name when it has one. One
/// pass over the store, whatever the number of pods.
fn enrolled_pods(store: &Store, enrolled: &[(String, String)]) -> Vec<LocalPod> {
    let split = |workload: &str| -> (String, String) {
        let (namespace, name) = workload.split_once('/').unwrap_or(("", workload));
        (namespace.to_string(), name.to_string())
    };
    // By namespace, then pod name: looked up with the store's own strings, no allocation.
    let mut named: HashMap<String, HashMap<String, Option<String>>> = HashMap::new();
    for (workload, _) in enrolled {
        let (namespace, name) = split(workload);
        named.entry(namespace).or_default().insert(name, None);
    }
    for w in store.workloads() {
        if let Some(id) = named
            .get_mut(w.namespace.as_str())
            .and_then(|pods| pods.get_mut(w.name.as_str()))
        {
            *id = Some(workload_id(w));
        }
    }
    enrolled
        .iter()
        .map(|(workload, identity)| {
            let (namespace, name) = split(workload);
            let known = named.get(&namespace).and_then(|pods| pods.get(&name));
            LocalPod {
                id: known.cloned().flatten().unwrap_or_else(|| workload.clone()),
                identity: Some(identity.clone()),
            }
        })
        .collect()
}

/// Dedicated mode's local workloads: those the tunnel's scope serves (at most
/// [`LOCAL_LIST_CAP`]).
fn served_workloads(store: &Store, scope: &Scope) -> Vec<LocalPod> {
    store
        .workloads()
        .filter(|w| scope.serves(w) && !w.host_network)
        .take(LOCAL_LIST_CAP)
        .map(|w| LocalPod {
            id: workload_id(w),
            identity: Some(w.identity().to_string()),
        })
        .collect()
}

/// `<namespace>/<workload name>`, the name the `istio_tcp_*` labels (and so the graph) use.
fn workload_id(w: &Workload) -> String {
    let name = if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    };
    format!("{}/{name}", w.namespace)
}

/// The answer from a snapshot of the graph and the local pods, as of `now`.
pub fn build(view: &GraphView, local: &[LocalPod], now: SystemTime) -> LiveGraph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for pod in local {
        nodes.insert(
            pod.id.clone(),
            Node {
                id: pod.id.clone(),
                kind: "workload",
                local: true,
                identity: pod.identity.clone(),
            },
        );
    }
    let mut edges = Vec::with_capacity(view.edges.len());
    for edge in &view.edges {
        let key = &edge.key;
        // The client of an outbound connection and the server of an inbound one are ours.
        let outbound = key.direction == "outbound";
        add_node(&mut nodes, &key.source, outbound, &edge.source_identity);
        add_node(
            &mut nodes,
            &key.destination,
            !outbound,
            &edge.destination_identity,
        );
        edges.push(edge_json(edge, view.taken, now));
    }
    let (mut local_nodes, peers): (Vec<Node>, Vec<Node>) =
        nodes.into_values().partition(|n| n.local);
    local_nodes.extend(peers);
    LiveGraph {
        schema: SCHEMA,
        generated_at: rfc3339(now),
        window_seconds: view.window.as_secs(),
        edge_cap: view.cap,
        untracked_connections: view.untracked,
        nodes: local_nodes,
        edges,
    }
}

fn add_node(
    nodes: &mut BTreeMap<String, Node>,
    party: &Party,
    local: bool,
    identity: &Option<String>,
) {
    let node = nodes.entry(party.id()).or_insert_with(|| Node {
        id: party.id(),
        kind: party.kind(),
        local: false,
        identity: None,
    });
    node.local |= local;
    if node.identity.is_none() {
        node.identity.clone_from(identity);
    }
}

fn edge_json(edge: &EdgeView, taken: Instant, now: SystemTime) -> Edge {
    let (key, stats) = (&edge.key, &edge.stats);
    let ago = taken.saturating_duration_since(stats.last_seen);
    Edge {
        id: format!(
            "{}|{}|{}|{}|{}",
            key.direction,
            key.protocol,
            key.source.id(),
            key.destination.id(),
            key.service
        ),
        source: key.source.id(),
        destination: key.destination.id(),
        service: (!key.service.is_empty()).then(|| key.service.clone()),
        protocol: key.protocol,
        direction: key.direction,
        live_connections: stats.live,
        total_connections: stats.total,
        failed_connections: stats.failed,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        denied_connections: stats.denied,
        denied_by: stats.last_denial.as_ref().map(|d| DeniedBy {
            policy: d.policy.clone(),
            reason: d.reason,
            detail: d.detail.clone(),
        }),
        last_failure: stats.last_failure,
        last_seen: rfc3339(now.checked_sub(ago).unwrap_or(now)),
        last_seen_seconds_ago: ago.as_secs(),
    }
}

fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    nodetunnel_base::rfc3339::format(
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Some(since.subsec_micros()),
    )
}
