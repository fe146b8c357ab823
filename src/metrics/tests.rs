//! The exposition as Prometheus scrapes it: Istio's metric names, ztunnel's label set (names,
//! order, `unknown` defaults) and `istio_build`.

use super::*;
use crate::state::fixtures;

/// The label pairs of the first sample of `family` (e.g. `istio_tcp_connections_opened_total`),
/// in exposition order, and its value.
fn sample(text: &str, family: &str) -> (Vec<(String, String)>, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")))
        .unwrap_or_else(|| panic!("no {family} sample in:\n{text}"));
    let (labels, value) = line[family.len() + 1..]
        .rsplit_once("} ")
        .unwrap_or_else(|| panic!("not a sample: {line}"));
    let pairs = labels
        .split("\",")
        .map(|pair| {
            let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{pair}"));
            (k.to_string(), v.trim_end_matches('"').to_string())
        })
        .collect();
    (pairs, value.to_string())
}

fn names(pairs: &[(String, String)]) -> Vec<&str> {
    pairs.iter().map(|(k, _)| k.as_str()).collect()
}

fn label<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no label {key} in {pairs:?}"))
}

/// ztunnel's `CommonTrafficLabels`, in its order.
const ZTUNNEL_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

fn base() -> ConnectionLabels {
    ConnectionLabels {
        reporter: "source",
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: "unknown",
        ..Default::default()
    }
}

#[test]
fn nothing_known_is_unknown_and_no_locality_labels() {
    let m = Metrics::new();
    m.connections_opened.get_or_create(&base()).inc();
    let (pairs, value) = sample(&m.encode(), "istio_tcp_connections_opened_total");
    assert_eq!(names(&pairs), ZTUNNEL_LABELS);
    for (k, v) in &pairs {
        let want = match k.as_str() {
            "reporter" => "source",
            "request_protocol" => "tcp",
            "response_flags" => "-",
            _ => "unknown",
        };
        assert_eq!(v, want, "{k}");
    }
    assert_eq!(value, "1");
}

#[test]
fn workloads_and_service_fill_kialis_labels_and_locality() {
    let mut src = fixtures::workload("client-1", "10.0.0.1");
    src.workload_name = "client".into();
    src.canonical_name = "client-app".into();
    src.canonical_revision = "v2".into();
    src.cluster_id = "c1".into();
    src.locality.region = "r1".into();
    src.locality.zone = "z1".into();
    let mut dst = fixtures::workload("server-1", "10.0.0.2");
    dst.namespace = "prod".into();
    dst.canonical_name = "server".into();
    dst.canonical_revision = "v1".into();
    dst.locality.region = "r2".into();
    let mut svc = fixtures::service("server.prod.svc.cluster.local", "/10.96.0.10");
    svc.name = "server".into();
    svc.namespace = "prod".into();

    let labels = base()
        .with_source(Some(&src))
        .with_destination(Some(&dst))
        .with_destination_service(Some(&svc));
    let m = Metrics::new();
    m.sent_bytes.get_or_create(&labels).inc_by(42);
    let (pairs, value) = sample(&m.encode(), "istio_tcp_sent_bytes_total");
    let mut want: Vec<&str> = ZTUNNEL_LABELS.to_vec();
    want.extend([
        "source_region",
        "source_zone",
        "destination_region",
        "destination_zone",
    ]);
    assert_eq!(names(&pairs), want);
    for (k, v) in [
        ("source_workload", "client"),
        ("source_canonical_service", "client-app"),
        ("source_canonical_revision", "v2"),
        ("source_workload_namespace", "default"),
        // Only mTLS proves a source principal; the caller sets it (not with_source).
        ("source_principal", "unknown"),
        ("source_app", "client-app"),
        ("source_version", "v2"),
        ("source_cluster", "c1"),
        ("destination_service", "server.prod.svc.cluster.local"),
        ("destination_service_namespace", "prod"),
        ("destination_service_name", "server"),
        // No owner name: the pod's.
        ("destination_workload", "server-1"),
        ("destination_canonical_service", "server"),
        ("destination_canonical_revision", "v1"),
        ("destination_workload_namespace", "prod"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/prod/sa/server-1",
        ),
        ("destination_app", "server"),
        ("destination_version", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("source_region", "r1"),
        ("source_zone", "z1"),
        ("destination_region", "r2"),
        ("destination_zone", "unknown"),
    ] {
        assert_eq!(label(&pairs, k), v, "{k}");
    }
    assert_eq!(value, "42");
}

#[test]
fn istio_build_names_the_component_ztunnel_and_the_istio_release() {
    let text = Metrics::for_istio_version(Some("1.28.0")).encode();
    assert!(text.contains("# TYPE istio_build gauge"), "{text}");
    let (pairs, value) = sample(&text, "istio_build");
    assert_eq!(
        pairs,
        [
            ("component".to_string(), "ztunnel".to_string()),
            ("tag".to_string(), "1.28.0".to_string())
        ]
    );
    assert_eq!(value, "1");
    let (pairs, _) = sample(&Metrics::new().encode(), "istio_build");
    assert_eq!(label(&pairs, "tag"), "unknown");
}

#[test]
fn every_istio_family_is_registered_under_istios_name() {
    let m = Metrics::new();
    for family in [
        &m.connections_opened,
        &m.connections_closed,
        &m.connections_failed,
        &m.sent_bytes,
        &m.received_bytes,
    ] {
        family.get_or_create(&base()).inc();
    }
    let text = m.encode();
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_connections_failed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        assert_eq!(sample(&text, name).1, "1", "{name}");
    }
    assert!(
        text.contains("nodetunnel_hbone_connections_opened_total 0"),
        "{text}"
    );
}

/// The samples of `family` as (labels, value) lines, for the families added below.
fn lines<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test]
async fn certificate_expiry_is_per_identity_and_states_are_counted() {
    use crate::identity::{CertificateSource, Identity, LocalCa, SecretManager};
    use std::time::Duration;
    let ca = LocalCa::generate("cluster.local").unwrap();
    let certs = SecretManager::new(
        CertificateSource::Local(std::sync::Arc::new(ca)),
        Duration::from_secs(3600),
    );
    let ok = Identity::new("cluster.local", "default", "ok");
    certs.fetch(&ok).await.unwrap();
    let m = Metrics::new();
    m.register_certificates(certs.clone());
    let text = m.encode();
    let expiry = lines(&text, "nodetunnel_certificate_expiry_seconds");
    assert_eq!(expiry.len(), 1, "{text}");
    let (labels, value) = expiry[0].rsplit_once(' ').unwrap();
    assert_eq!(
        labels,
        "nodetunnel_certificate_expiry_seconds{identity=\"spiffe://cluster.local/ns/default/sa/ok\"}"
    );
    let left: f64 = value.parse().unwrap();
    assert!(left > 3000.0 && left <= 3600.0 + 300.0, "{left}");
    assert_eq!(
        lines(&text, "nodetunnel_certificates"),
        [
            "nodetunnel_certificates{state=\"available\"} 1",
            "nodetunnel_certificates{state=\"initializing\"} 0",
            "nodetunnel_certificates{state=\"unavailable\"} 0",
        ]
    );
    assert!(
        super::certs::seconds_until(
            std::time::UNIX_EPOCH,
            std::time::UNIX_EPOCH + Duration::from_secs(5)
        ) == -5.0
    );
}

#[test]
fn inpod_metrics_appear_only_once_registered_with_ztunnels_names() {
    let m = Metrics::new();
    assert!(
        !m.encode().contains("workload_manager_"),
        "dedicated mode has none"
    );
    m.inpod.zds_connected.set(1);
    m.inpod.zds_connects.inc();
    m.inpod.proxies_started.inc_by(3);
    m.inpod.proxies_stopped.inc();
    m.register_inpod(ActivePods(Box::new(|| 2)));
    let text = m.encode();
    for line in [
        "workload_manager_active_proxy_count 2",
        "workload_manager_proxies_started_total 3",
        "workload_manager_proxies_stopped_total 1",
        "nodetunnel_zds_connected 1",
        "nodetunnel_zds_connects_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn data_path_gauges_outcomes_and_build_info_are_exposed() {
    let m = Metrics::new();
    m.pool.connections.inc();
    m.pool.streams.inc_by(4);
    let _open = GaugeGuard::hold(&m.hbone_inbound_connections);
    m.connection_outcomes
        .get_or_create(&OutcomeLabels::new(
            "inbound",
            "HBONE",
            ConnectionOutcome::Denied,
            "policy_denied",
        ))
        .inc();
    let text = m.encode();
    for line in [
        "nodetunnel_hbone_pool_connections 1",
        "nodetunnel_hbone_pool_streams 4",
        "nodetunnel_hbone_inbound_connections 1",
        "nodetunnel_connections_total{direction=\"inbound\",protocol=\"HBONE\",outcome=\"denied\",flag=\"policy_denied\"} 1",
        &format!("nodetunnel_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    drop(_open);
    assert!(m
        .encode()
        .lines()
        .any(|l| l == "nodetunnel_hbone_inbound_connections 0"));
    assert!(
        text.contains("# TYPE process_resident_memory_bytes gauge"),
        "the process collector is always registered"
    );
}
