//! What one finished connection leaves in the metrics, and which service an inbound one is
//! reported under.

use std::path::Path;

use super::*;
use crate::state::{load_str, Defaults};

fn record(metrics: &Arc<Metrics>) -> ConnectionRecord {
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    ConnectionRecord::start(
        metrics.clone(),
        Description::unrouted("outbound", src, Some(dst)),
    )
}

/// The `response_flags` values of `family`'s samples with their values.
fn samples(metrics: &Metrics, family: &str) -> Vec<(String, String)> {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(|l| {
            let flag = l
                .split("response_flags=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string();
            (flag, l.rsplit(' ').next().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn a_connection_refused_before_its_upstream_counts_as_opened_failed_and_closed() {
    let metrics = Arc::new(Metrics::new());
    let addr: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    let error = ProxyError::UpstreamTimeout(addr);
    record(&metrics).finish(Transferred::default(), Some(&error));
    assert_eq!(
        samples(&metrics, "istio_tcp_connections_failed_total"),
        [("CONNECT".to_string(), "1".to_string())],
        "ztunnel's response_flags value, not the access log's flag"
    );
    // As ztunnel counts them: opened when taken on, closed when it ended, failed or not.
    assert_eq!(
        samples(&metrics, "istio_tcp_connections_opened_total"),
        [("-".to_string(), "1".to_string())]
    );
    assert_eq!(
        samples(&metrics, "istio_tcp_connections_closed_total"),
        [("CONNECT".to_string(), "1".to_string())]
    );
    assert!(
        samples(&metrics, "istio_tcp_sent_bytes_total").is_empty(),
        "no bytes without an upstream"
    );
}

#[test]
fn a_connection_cut_at_the_drain_deadline_counts_as_failed_and_closed() {
    let metrics = Arc::new(Metrics::new());
    let mut r = record(&metrics);
    r.opened();
    drop(r);
    for family in [
        "istio_tcp_connections_failed_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert_eq!(
            samples(&metrics, family),
            [("CONNECT".to_string(), "1".to_string())],
            "{family}"
        );
    }
    assert!(
        metrics.encode().contains(
            "nodetunnel_connections_total{direction=\"outbound\",protocol=\"TCP\",outcome=\"failed\",flag=\"drain_cut\"} 1"
        ),
        "{}",
        metrics.encode()
    );
}

#[test]
fn a_clean_connection_is_not_failed() {
    let metrics = Arc::new(Metrics::new());
    let mut r = record(&metrics);
    r.opened();
    r.finish(
        Transferred {
            a_to_b: 3,
            b_to_a: 4,
        },
        None,
    );
    assert!(samples(&metrics, "istio_tcp_connections_failed_total").is_empty());
    for family in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert_eq!(
            samples(&metrics, family),
            [("-".to_string(), "1".to_string())],
            "{family}"
        );
    }
    // Istio's meaning: received = the request (a → b), sent = the response (b → a).
    assert_eq!(
        samples(&metrics, "istio_tcp_received_bytes_total"),
        [("-".to_string(), "3".to_string())]
    );
    assert_eq!(
        samples(&metrics, "istio_tcp_sent_bytes_total"),
        [("-".to_string(), "4".to_string())]
    );
    assert!(
        metrics.encode().contains(
            "nodetunnel_connections_total{direction=\"outbound\",protocol=\"TCP\",outcome=\"completed\",flag=\"-\"} 1"
        ),
        "{}",
        metrics.encode()
    );
}

#[test]
fn the_log_counts_bytes_from_the_served_workloads_side() {
    let t = Transferred {
        a_to_b: 10,
        b_to_a: 25,
    };
    assert_eq!(logged_bytes("outbound", &t), (10, 25), "the client sent 10");
    assert_eq!(logged_bytes("inbound", &t), (25, 10), "the server sent 25");
}

#[test]
fn an_opened_connection_that_breaks_counts_as_failed_and_closed() {
    let metrics = Arc::new(Metrics::new());
    let mut r = record(&metrics);
    r.opened();
    let error = ProxyError::UpstreamTimeout("10.0.0.2:8080".parse().unwrap());
    r.finish(Transferred::default(), Some(&error));
    let flag = error.response_flags().to_string();
    assert_eq!(flag, "CONNECT");
    assert_eq!(
        samples(&metrics, "istio_tcp_connections_failed_total"),
        [(flag.clone(), "1".to_string())]
    );
    assert_eq!(
        samples(&metrics, "istio_tcp_connections_closed_total"),
        [(flag, "1".to_string())]
    );
}

const MESH: &str = r#"
workloads:
- uid: server-1
  name: server-1
  namespace: default
  workloadIps: ["10.0.0.2"]
  services:
    "default/web.default.svc.cluster.local": {}
    "default/named.default.svc.cluster.local": {80: 9000}
services:
- name: web
  namespace: default
  hostname: web.default.svc.cluster.local
  ports: {80: 8080}
- name: named
  namespace: default
  hostname: named.default.svc.cluster.local
  ports: {80: 0}
"#;

#[test]
fn inbound_service_is_the_one_whose_target_port_was_dialed() {
    let store = load_str(MESH, Path::new("mesh.yaml"), &Defaults::default())
        .expect("the mesh")
        .store;
    let w = store.workload_by_uid("server-1").expect("the workload");
    let host = |port| inbound_service(&store, &w, port).map(|s| s.hostname.clone());
    assert_eq!(host(8080).as_deref(), Some("web.default.svc.cluster.local"));
    // Through the workload's own mapping of the service port (a named port).
    assert_eq!(
        host(9000).as_deref(),
        Some("named.default.svc.cluster.local")
    );
    assert_eq!(host(7000), None);
}

/// Live records between the same parties hold one shared copy of identities and labels;
/// other parties get their own; a copy no record holds is swept once the set has grown.
#[test]
fn live_records_share_their_parties() {
    let metrics = Arc::new(Metrics::new());
    let with_workload = |name: &str| {
        let mut d = Description::unrouted(
            "outbound",
            "10.0.0.1:40000".parse().unwrap(),
            Some("10.0.0.2:8080".parse().unwrap()),
        );
        d.labels.destination_workload = name.to_string();
        ConnectionRecord::start(metrics.clone(), d)
    };
    let (a, b) = (
        with_workload("shared-test-a"),
        with_workload("shared-test-a"),
    );
    let other = with_workload("shared-test-b");
    assert!(Arc::ptr_eq(&a.description.parties, &b.description.parties));
    assert!(!Arc::ptr_eq(
        &a.description.parties,
        &other.description.parties
    ));
    assert_eq!(
        a.description.parties.labels.destination_workload,
        "shared-test-a"
    );
    let gone = Arc::downgrade(&other.description.parties);
    drop(other);
    // Enough distinct parties to pass any sweep threshold reached so far.
    let crowd: Vec<_> = (0..4096)
        .map(|i| with_workload(&format!("shared-test-crowd-{i}")))
        .collect();
    assert!(gone.upgrade().is_none(), "an unheld copy outlived a sweep");
    assert!(Arc::ptr_eq(
        &a.description.parties,
        &with_workload("shared-test-a").description.parties
    ));
    drop((a, b, crowd));
}
