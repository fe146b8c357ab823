//! The graph's counts, its window and its cap.

use super::*;
use crate::metrics::ConnectionLabels;

fn labels(src: &str, dst: &str) -> ConnectionLabels {
    ConnectionLabels {
        source_workload: src.to_string(),
        source_workload_namespace: "default".to_string(),
        destination_workload: dst.to_string(),
        destination_workload_namespace: "default".to_string(),
        destination_service: "server.default.svc.cluster.local".to_string(),
        ..Default::default()
    }
}

fn ends<'a>(labels: &'a ConnectionLabels, protocol: &'static str) -> Ends<'a> {
    Ends {
        direction: "inbound",
        protocol,
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: Some("10.0.0.2:8080".parse().unwrap()),
        original_dst: None,
        src_identity: None,
        dst_identity: None,
        labels,
    }
}

/// Ends known only by their addresses: each source IP is a party of its own.
fn from_address(n: u32) -> (ConnectionLabels, SocketAddr) {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
    (ConnectionLabels::default(), SocketAddr::from((ip, 40000)))
}

/// The source party of [`from_address`]`(n)`.
fn party(n: u32) -> Party {
    Party::Address(from_address(n).1.ip())
}

fn open_from(graph: &TrafficGraph, n: u32) -> Option<EdgeHandle> {
    let (labels, src) = from_address(n);
    graph.open(&Ends {
        src,
        ..ends(&labels, "TCP")
    })
}

fn closed(bytes_sent: u64, bytes_received: u64) -> Outcome<'static> {
    Outcome {
        bytes_sent,
        bytes_received,
        ..Outcome::default()
    }
}

fn only_edge(graph: &TrafficGraph) -> EdgeView {
    let view = graph.snapshot(Instant::now());
    assert_eq!(view.edges.len(), 1, "{:#?}", view.edges);
    view.edges.into_iter().next().unwrap()
}

#[test]
fn connections_between_the_same_parties_add_up_on_one_edge() {
    let graph = TrafficGraph::new(RECENT_WINDOW, EDGE_CAP);
    let l = labels("client", "server");
    let first = graph.open(&ends(&l, "HBONE")).unwrap();
    let second = graph.open(&ends(&l, "HBONE")).unwrap();
    let third = graph.open(&ends(&l, "HBONE")).unwrap();
    let edge = only_edge(&graph);
    assert_eq!(
        edge.key,
        EdgeKey {
            source: Party::Workload("default/client".into()),
            destination: Party::Workload("default/server".into()),
            service: "server.default.svc.cluster.local".into(),
            protocol: "HBONE",
            direction: "inbound",
        }
    );
    assert_eq!((edge.stats.live, edge.stats.total), (3, 3));
    assert_eq!(
        edge.stats.bytes_sent, 0,
        "bytes count when a connection closes"
    );

    first.finish(closed(100, 7));
    second.finish(closed(23, 3));
    let stats = only_edge(&graph).stats;
    assert_eq!((stats.live, stats.total, stats.failed), (1, 3, 0));
    assert_eq!((stats.bytes_sent, stats.bytes_received), (123, 10));

    // Cut at a drain deadline: dropped without finishing, it fails with its bytes unknown.
    drop(third);
    let stats = only_edge(&graph).stats;
    assert_eq!((stats.live, stats.total, stats.failed), (0, 3, 1));
    assert_eq!(
        stats.last_failure,
        Some(crate::proxy::access::DRAIN_CUT_FLAG),
        "the access log's flag for a cut connection"
    );
    assert_eq!((stats.bytes_sent, stats.bytes_received), (123, 10));
}

#[test]
fn protocol_and_direction_make_different_edges() {
    let graph = TrafficGraph::new(RECENT_WINDOW, EDGE_CAP);
    let l = labels("client", "server");
    let _hbone = graph.open(&ends(&l, "HBONE"));
    let _tcp = graph.open(&ends(&l, "TCP"));
    let _out = graph.open(&Ends {
        direction: "outbound",
        ..ends(&l, "HBONE")
    });
    let keys: Vec<_> = graph
        .snapshot(Instant::now())
        .edges
        .iter()
        .map(|e| (e.key.direction, e.key.protocol))
        .collect();
    assert_eq!(
        keys,
        [
            ("inbound", "HBONE"),
            ("outbound", "HBONE"),
            ("inbound", "TCP")
        ],
        "sorted by key: parties, service, protocol, then direction"
    );
}

#[test]
fn a_denial_counts_with_its_policy_and_reason() {
    let graph = TrafficGraph::new(RECENT_WINDOW, EDGE_CAP);
    let l = labels("client2", "server");
    let deny = DenyReason::DenyPolicy {
        policy: "default/deny-client2".into(),
    };
    for _ in 0..2 {
        graph.open(&ends(&l, "HBONE")).unwrap().finish(Outcome {
            failure: Some("policy_denied"),
            denial: Some(&deny),
            ..Outcome::default()
        });
    }
    let stats = only_edge(&graph).stats;
    assert_eq!((stats.total, stats.failed, stats.denied), (2, 2, 2));
    assert_eq!(stats.last_failure, Some("policy_denied"));
    assert_eq!(
        stats.last_denial,
        Some(Denial {
            policy: "default/deny-client2".into(),
            reason: "deny_policy",
            detail: "DENY policy default/deny-client2 matched".into(),
        })
    );
}

#[test]
fn a_source_without_workload_is_named_by_identity_else_address() {
    let none = ConnectionLabels::default();
    let id: Identity = "spiffe://cluster.local/ns/default/sa/client"
        .parse()
        .unwrap();
    let by_identity = EdgeKey::of(&Ends {
        src_identity: Some(&id),
        ..ends(&none, "HBONE")
    });
    assert_eq!(
        by_identity.source,
        Party::Identity("spiffe://cluster.local/ns/default/sa/client".into())
    );
    let by_address = EdgeKey::of(&ends(&none, "TCP"));
    assert_eq!(
        by_address.source,
        Party::Address("10.0.0.1".parse().unwrap())
    );
    assert_eq!(
        by_address.destination,
        Party::Address("10.0.0.2".parse().unwrap())
    );
    assert_eq!(by_address.source.id(), "10.0.0.1");
    assert_eq!(by_address.source.kind(), "address");
}

#[test]
fn closed_edges_expire_after_the_window_and_live_ones_stay() {
    let window = Duration::from_secs(60);
    let graph = TrafficGraph::new(window, EDGE_CAP);
    open_from(&graph, 1).unwrap().finish(closed(1, 1));
    let _live = open_from(&graph, 2).unwrap();
    let now = Instant::now();
    assert_eq!(graph.snapshot(now).edges.len(), 2);
    // The snapshot's clock, not a sleep: one second past the window.
    let later = now + window + Duration::from_secs(1);
    let view = graph.snapshot(later);
    assert_eq!(view.edges.len(), 1, "{:#?}", view.edges);
    assert_eq!(
        view.edges[0].key.source,
        Party::Address("10.0.0.2".parse().unwrap()),
        "the edge with a live connection stays, however old"
    );
    assert_eq!(view.edges[0].stats.live, 1);
}

#[test]
fn a_full_table_evicts_the_closed_edges_seen_longest_ago() {
    let cap = 20;
    let graph = TrafficGraph::new(RECENT_WINDOW, cap);
    // Edge 0 stays live; 1..cap close in order, so 1 is the oldest.
    let _live = open_from(&graph, 0).unwrap();
    for n in 1..cap as u32 {
        open_from(&graph, n).unwrap().finish(closed(0, 0));
    }
    assert_eq!(graph.snapshot(Instant::now()).edges.len(), cap);

    open_from(&graph, 1000).unwrap().finish(closed(0, 0));
    let sources: Vec<_> = graph
        .snapshot(Instant::now())
        .edges
        .into_iter()
        .map(|e| e.key.source)
        .collect();
    // A tenth of the cap (2 edges) went: the two closed longest ago.
    assert_eq!(sources.len(), cap - 1);
    for gone in [1, 2] {
        assert!(
            !sources.contains(&party(gone)),
            "edge {gone} should have been evicted: {sources:?}"
        );
    }
    for kept in [0, 3, cap as u32 - 1, 1000] {
        assert!(
            sources.contains(&party(kept)),
            "edge {kept} should be kept: {sources:?}"
        );
    }
}

#[test]
fn a_table_full_of_live_edges_counts_new_parties_as_untracked() {
    let cap = 5;
    let graph = TrafficGraph::new(RECENT_WINDOW, cap);
    let live: Vec<_> = (0..cap as u32)
        .map(|n| open_from(&graph, n).unwrap())
        .collect();
    // A flood of new parties: the table does not grow, each is counted.
    for n in 100..1100 {
        assert!(open_from(&graph, n).is_none());
    }
    let view = graph.snapshot(Instant::now());
    assert_eq!(view.edges.len(), cap);
    assert_eq!(view.untracked, 1000);
    // A party already in the table still counts on its edge.
    let again = open_from(&graph, 0).unwrap();
    assert_eq!(graph.snapshot(Instant::now()).edges[0].stats.live, 2);
    drop((live, again));
}

/// The access record is what feeds the process's graph: a connection counts on its edge when
/// its record starts, and its bytes when the record finishes.
#[test]
fn the_access_record_feeds_the_shared_graph() {
    use crate::metrics::Metrics;
    use crate::proxy::access::{ConnectionRecord, Description};
    use crate::proxy::copy::Transferred;

    // Addresses no other test uses, so this edge is this test's alone in the shared graph.
    let (src, dst): (SocketAddr, SocketAddr) = (
        "192.0.2.77:40000".parse().unwrap(),
        "198.51.100.77:8080".parse().unwrap(),
    );
    let edge = || {
        TrafficGraph::shared()
            .snapshot(Instant::now())
            .edges
            .into_iter()
            .find(|e| e.key.source == Party::Address(src.ip()))
            .map(|e| (e.key.destination, e.stats))
    };
    let metrics = Arc::new(Metrics::new());
    let record = ConnectionRecord::start(
        metrics.clone(),
        Description::unrouted("outbound", src, Some(dst)),
    );
    let (destination, stats) = edge().expect("the started connection's edge");
    assert_eq!(destination, Party::Address(dst.ip()));
    assert_eq!((stats.live, stats.total), (1, 1));

    record.finish(
        Transferred {
            a_to_b: 11,
            b_to_a: 13,
        },
        None,
    );
    let (_, stats) = edge().unwrap();
    assert_eq!((stats.live, stats.total, stats.failed), (0, 1, 0));
    assert_eq!((stats.bytes_sent, stats.bytes_received), (11, 13));

    // Cut at a drain deadline (dropped unfinished): failed, still off the live count.
    drop(ConnectionRecord::start(
        metrics,
        Description::unrouted("outbound", src, Some(dst)),
    ));
    let (_, stats) = edge().unwrap();
    assert_eq!((stats.live, stats.total, stats.failed), (0, 2, 1));
}

/// Connections starting and ending on many threads at once (the data path's workers) add up
/// exactly.
#[test]
fn concurrent_connections_add_up_exactly() {
    let graph = TrafficGraph::new(RECENT_WINDOW, EDGE_CAP);
    let l = labels("client", "server");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    graph.open(&ends(&l, "HBONE")).unwrap().finish(closed(3, 5));
                }
            });
        }
    });
    let stats = only_edge(&graph).stats;
    assert_eq!((stats.live, stats.total, stats.failed), (0, 4000, 0));
    assert_eq!((stats.bytes_sent, stats.bytes_received), (12_000, 20_000));
}
