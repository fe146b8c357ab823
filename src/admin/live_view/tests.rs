//! The JSON the page and the tests read: field names, node sides, the denial.

use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::authz::DenyReason;
use crate::identity::Identity;
use crate::metrics::ConnectionLabels;
use crate::proxy::traffic::{EdgeHandle, Ends, Outcome, TrafficGraph};

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

fn inbound<'a>(
    labels: &'a ConnectionLabels,
    src: &str,
    identities: Option<(&'a Identity, &'a Identity)>,
) -> Ends<'a> {
    Ends {
        direction: "inbound",
        protocol: if identities.is_some() { "HBONE" } else { "TCP" },
        src: src.parse().unwrap(),
        dst: Some("10.77.2.10:8080".parse().unwrap()),
        original_dst: None,
        src_identity: identities.map(|(src, _)| src),
        dst_identity: identities.map(|(_, dst)| dst),
        labels,
    }
}

/// An inbound graph: client → server over HBONE (two connections, one still live: its handle
/// is returned), client2 → server denied by a named policy, and a plaintext client known only
/// by its address.
fn graph() -> (TrafficGraph, EdgeHandle) {
    let graph = TrafficGraph::new(Duration::from_secs(600), 1000);
    let client: Identity = "spiffe://cluster.local/ns/default/sa/client"
        .parse()
        .unwrap();
    let server: Identity = "spiffe://cluster.local/ns/default/sa/server"
        .parse()
        .unwrap();
    let ids = Some((&client, &server));
    let allowed = labels("client", "server");
    graph
        .open(&inbound(&allowed, "10.77.1.10:40000", ids))
        .unwrap()
        .finish(Outcome {
            bytes_sent: 1000,
            bytes_received: 1000,
            ..Outcome::default()
        });
    let live = graph
        .open(&inbound(&allowed, "10.77.1.10:40002", ids))
        .unwrap();
    let deny = DenyReason::DenyPolicy {
        policy: "default/deny-client2".into(),
    };
    graph
        .open(&inbound(
            &labels("client2", "server"),
            "10.77.1.11:40000",
            ids,
        ))
        .unwrap()
        .finish(Outcome {
            failure: Some("policy_denied"),
            denial: Some(&deny),
            ..Outcome::default()
        });
    let plain = ConnectionLabels {
        source_workload: String::new(),
        ..labels("", "server")
    };
    graph
        .open(&inbound(&plain, "10.77.1.11:40001", None))
        .unwrap()
        .finish(Outcome {
            bytes_sent: 5,
            bytes_received: 7,
            ..Outcome::default()
        });
    (graph, live)
}

fn answer(local: &[LocalPod]) -> serde_json::Value {
    let (graph, _live) = graph();
    let built = build(&graph.snapshot(Instant::now()), local, SystemTime::now());
    serde_json::to_value(built).unwrap()
}

#[test]
fn the_answer_has_the_documented_top_level_fields() {
    let json = answer(&[]);
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "edge_cap",
            "edges",
            "generated_at",
            "nodes",
            "schema",
            "untracked_connections",
            "window_seconds"
        ]
    );
    assert_eq!(json["schema"], "nodetunnel.live/v1");
    assert_eq!(json["window_seconds"], 600);
    assert_eq!(json["edge_cap"], 1000);
    assert_eq!(json["untracked_connections"], 0);
    let at = json["generated_at"].as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2026-01-01T00:00:00.000000Z".len(),
        "{at}"
    );
}

#[test]
fn an_edge_carries_its_counts_and_its_denial() {
    let json = answer(&[]);
    let edges = json["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 3, "{json:#}");
    let allowed = edges
        .iter()
        .find(|e| e["source"] == "default/client")
        .unwrap();
    assert_eq!(
        *allowed,
        serde_json::json!({
            "id": "inbound|HBONE|default/client|default/server|server.default.svc.cluster.local",
            "source": "default/client",
            "destination": "default/server",
            "service": "server.default.svc.cluster.local",
            "protocol": "HBONE",
            "direction": "inbound",
            "live_connections": 1,
            "total_connections": 2,
            "failed_connections": 0,
            "bytes_sent": 1000,
            "bytes_received": 1000,
            "denied_connections": 0,
            "denied_by": null,
            "last_failure": null,
            "last_seen": allowed["last_seen"],
            "last_seen_seconds_ago": 0,
        })
    );
    let denied = edges
        .iter()
        .find(|e| e["source"] == "default/client2")
        .unwrap();
    assert_eq!(denied["denied_connections"], 1);
    assert_eq!(denied["failed_connections"], 1);
    assert_eq!(denied["last_failure"], "policy_denied");
    assert_eq!(
        denied["denied_by"],
        serde_json::json!({
            "policy": "default/deny-client2",
            "reason": "deny_policy",
            "detail": "DENY policy default/deny-client2 matched",
        })
    );
    let plain = edges.iter().find(|e| e["protocol"] == "TCP").unwrap();
    assert_eq!(plain["source"], "10.77.1.11");
    assert_eq!(
        (
            plain["bytes_sent"].as_u64(),
            plain["bytes_received"].as_u64()
        ),
        (Some(5), Some(7))
    );
}

#[test]
fn local_pods_come_first_and_peers_are_marked_remote() {
    // An enrolled pod without traffic is still on the graph.
    let idle = LocalPod {
        id: "default/idle".into(),
        identity: Some("spiffe://cluster.local/ns/default/sa/idle".into()),
    };
    let json = answer(&[idle]);
    let nodes: Vec<(String, bool, String)> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["local"].as_bool().unwrap(),
                n["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |id: &str, local, kind: &str| (id.to_string(), local, kind.to_string());
    assert_eq!(
        nodes,
        [
            // Local: the enrolled pod and the server of the inbound edges.
            expect("default/idle", true, "workload"),
            expect("default/server", true, "workload"),
            expect("10.77.1.11", false, "address"),
            expect("default/client", false, "workload"),
            expect("default/client2", false, "workload"),
        ]
    );
    let client = &json["nodes"][3];
    assert_eq!(
        client["identity"], "spiffe://cluster.local/ns/default/sa/client",
        "the identity the peer proved"
    );
}

#[test]
fn the_page_is_self_contained_and_reads_the_json() {
    assert!(PAGE.contains("fetch(\"/live/graph.json\""));
    for external in ["<script src", "<link", "@import", "http://", "https://"] {
        let outside = PAGE
            .match_indices(external)
            .any(|(i, _)| !PAGE[i..].starts_with("http://www.w3.org/2000/svg"));
        assert!(
            !outside,
            "the page refers to something outside it: {external}"
        );
    }
}

const MESH: &str = r#"
workloads:
- uid: web-7d9f-abcde
  name: web-7d9f-abcde
  workloadName: web
  namespace: shop
  serviceAccount: web-sa
  node: n1
  workloadIps: ["10.0.0.2"]
- uid: db-0
  name: db-0
  namespace: shop
  node: n1
  workloadIps: ["10.0.0.3"]
- uid: host-agent
  name: host-agent
  namespace: kube-system
  node: n1
  networkMode: HostNetwork
  workloadIps: ["10.0.0.1"]
- uid: elsewhere
  name: elsewhere
  namespace: shop
  node: n2
  workloadIps: ["10.0.1.2"]
"#;

fn store() -> crate::state::Store {
    crate::state::load_str(
        MESH,
        std::path::Path::new("mesh.yaml"),
        &crate::state::Defaults::default(),
    )
    .expect("the mesh")
    .store
}

/// Shared mode: the pod table names pods; the graph names them as the traffic labels do, by
/// the store's workload name.
#[test]
fn enrolled_pods_are_named_as_their_traffic_is() {
    let enrolled = [
        (
            "shop/web-7d9f-abcde".to_string(),
            "spiffe://web".to_string(),
        ),
        ("shop/not-in-store".to_string(), "spiffe://x".to_string()),
    ];
    let pods = enrolled_pods(&store(), &enrolled);
    let ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["shop/web", "shop/not-in-store"]);
    assert_eq!(pods[0].identity.as_deref(), Some("spiffe://web"));
}

/// Dedicated mode: the scope's workloads on this node, without host-network ones.
#[test]
fn served_workloads_are_the_scopes_own() {
    let scope = Scope {
        node: Some("n1".into()),
        workload: None,
    };
    let mut ids: Vec<String> = served_workloads(&store(), &scope)
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["shop/db-0", "shop/web"]);
}
