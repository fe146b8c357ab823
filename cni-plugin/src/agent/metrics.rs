//! `/metrics` on the chart's `metrics` port (15014, `prometheus.io/port`), with the names,
//! labels and meanings of Istio's agent (istio/istio `cni/pkg/install/monitoring.go`,
//! `cni/pkg/nodeagent/{cni-watcher,informers,ztunnelserver}.go`; Istio's exporter adds no unit
//! or `_total` suffix of its own, so the names below are the scraped names):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `istio_cni_install_ready` | gauge | | the plugin binary, kubeconfig and conflist entry are in place |
//! | `istio_cni_installs_total` | counter | `result` | install passes: `SUCCESS`, `COPY_BINARIES_FAILURE`, `CREATE_KUBECONFIG_FAILURE`, `CREATE_CNI_CONFIG_FAILURE` |
//! | `istio_cni_plugin_requests_total` | counter | `response_code` | plugin `ADD` events answered, by HTTP status |
//! | `nodeagent_reconcile_events_total` | counter | `type` | pod and namespace watch events handled: `add`, `update`, `delete` |
//! | `ztunnel_connected` | gauge | | tunnel connections on the ZDS socket (this agent serves one: 0 or 1) |
//! | `nodetunnel_cni_unprotected_pods` | gauge | | enrolled pods the last reconcile pass found not protected (rules incomplete, not served by the current tunnel, or quarantined); 0 in steady state |
//! | `nodetunnel_cni_repairs_total` | counter | `kind` | repairs the reconcile made: `rules` (in-pod rules re-written), `tunnel` (pod re-sent to the tunnel), `sandbox` (a replaced netns re-enrolled) |
//!
//! The last two are this agent's own (Istio's agent has no continuous reconcile).
//!
//! Not exported: Istio's repair metrics (`istio_cni_repair_pods_repaired_total`), as this agent
//! does no sidecar repair.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http_server::{self, text};
use crate::install::PassResult;

/// The OpenMetrics text format `prometheus_client` writes (it ends with `# EOF`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseCodeLabel {
    response_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

/// A watch event as Istio's queue names it (`controllers.EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileEvent {
    Add,
    Update,
    Delete,
}

impl ReconcileEvent {
    fn label(self) -> &'static str {
        match self {
            ReconcileEvent::Add => "add",
            ReconcileEvent::Update => "update",
            ReconcileEvent::Delete => "delete",
        }
    }
}

/// The agent's metrics, shared with the parts that move them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    install_ready: Gauge,
    installs: Family<ResultLabel, Counter>,
    plugin_requests: Family<ResponseCodeLabel, Counter>,
    reconcile_events: Family<TypeLabel, Counter>,
    ztunnel_connected: Gauge,
    unprotected_pods: Gauge,
    repairs: Family<KindLabel, Counter>,
}

/// What a reconcile pass repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    Rules,
    Tunnel,
    Sandbox,
}

impl Repair {
    fn label(self) -> &'static str {
        match self {
            Repair::Rules => "rules",
            Repair::Tunnel => "tunnel",
            Repair::Sandbox => "sandbox",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let install_ready = Gauge::default();
        let installs = Family::<ResultLabel, Counter>::default();
        let plugin_requests = Family::<ResponseCodeLabel, Counter>::default();
        let reconcile_events = Family::<TypeLabel, Counter>::default();
        let ztunnel_connected = Gauge::default();
        let unprotected_pods = Gauge::default();
        let repairs = Family::<KindLabel, Counter>::default();
        // Istio's help texts, less a final period (the encoder adds one); counters are
        // registered without `_total`, which the encoder adds.
        registry.register(
            "istio_cni_install_ready",
            "Whether the CNI plugin installation is ready or not",
            install_ready.clone(),
        );
        registry.register(
            "istio_cni_installs",
            "Total number of CNI plugins installed by the Istio CNI installer",
            installs.clone(),
        );
        registry.register(
            "istio_cni_plugin_requests",
            "The total number of CNI plugin requests handled by the node agent",
            plugin_requests.clone(),
        );
        registry.register(
            "nodeagent_reconcile_events",
            "The total number of node agent reconcile events",
            reconcile_events.clone(),
        );
        registry.register(
            "ztunnel_connected",
            "number of connections to ztunnel",
            ztunnel_connected.clone(),
        );
        registry.register(
            "nodetunnel_cni_unprotected_pods",
            "Enrolled pods whose in-pod rules, tunnel or netns the last reconcile pass found wrong and could not repair",
            unprotected_pods.clone(),
        );
        registry.register(
            "nodetunnel_cni_repairs",
            "Repairs made by the reconcile pass, by kind",
            repairs.clone(),
        );
        Metrics {
            registry,
            install_ready,
            installs,
            plugin_requests,
            reconcile_events,
            ztunnel_connected,
            unprotected_pods,
            repairs,
        }
    }
}

impl Metrics {
    /// Follows a ZDS event: connected on hello, disconnected on a dropped connection.
    pub fn on_zds(&self, event: &nodetunnel_zds::agent::AgentEvent) {
        use nodetunnel_zds::agent::AgentEvent;
        match event {
            AgentEvent::Connected => {
                self.ztunnel_connected.set(1);
            }
            AgentEvent::Disconnected { .. } => {
                self.ztunnel_connected.set(0);
            }
            _ => {}
        }
    }

    /// One counted install pass.
    pub fn on_install_pass(&self, result: PassResult) {
        self.installs
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
    }

    /// One plugin `ADD` answered with `status`.
    pub fn on_plugin_request(&self, status: StatusCode) {
        self.plugin_requests
            .get_or_create(&ResponseCodeLabel {
                response_code: status.as_u16().to_string(),
            })
            .inc();
    }

    /// One pod or namespace watch event handled.
    pub fn on_reconcile_event(&self, event: ReconcileEvent) {
        self.reconcile_events
            .get_or_create(&TypeLabel {
                r#type: event.label(),
            })
            .inc();
    }

    /// The count of unprotected pods found by the last reconcile pass.
    pub fn set_unprotected(&self, pods: usize) {
        self.unprotected_pods
            .set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// One repair made.
    pub fn on_repair(&self, repair: Repair) {
        self.repairs
            .get_or_create(&KindLabel {
                kind: repair.label(),
            })
            .inc();
    }

    /// The exposition text, with the install gauge as of now.
    pub fn render(&self, installed: bool) -> String {
        self.install_ready.set(i64::from(installed));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    installed: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(http_server::serve(listener, "metrics", move |req| {
        let response = match req.uri().path() {
            "/metrics" => exposition(metrics.render(*installed.borrow())),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        async move { response }
    }))
}

fn exposition(body: String) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodetunnel_zds::agent::AgentEvent;

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn gauges_follow_install_and_zds() {
        let m = Metrics::default();
        let text = m.render(false);
        assert!(has(&text, "istio_cni_install_ready 0"), "{text}");
        assert!(has(&text, "ztunnel_connected 0"), "{text}");
        m.on_zds(&AgentEvent::Connected);
        let text = m.render(true);
        assert!(has(&text, "istio_cni_install_ready 1"), "{text}");
        assert!(has(&text, "ztunnel_connected 1"), "{text}");
        m.on_zds(&AgentEvent::Disconnected { reason: "x".into() });
        assert!(has(&m.render(true), "ztunnel_connected 0"));
    }

    #[test]
    fn counters_carry_istios_names_and_labels() {
        let m = Metrics::default();
        m.on_install_pass(PassResult::Success);
        m.on_install_pass(PassResult::CreateCniConfigFailure);
        m.on_plugin_request(StatusCode::OK);
        m.on_plugin_request(StatusCode::OK);
        m.on_plugin_request(StatusCode::INTERNAL_SERVER_ERROR);
        m.on_reconcile_event(ReconcileEvent::Add);
        m.on_reconcile_event(ReconcileEvent::Delete);
        m.on_repair(Repair::Rules);
        m.set_unprotected(2);
        let text = m.render(true);
        for line in [
            "# TYPE istio_cni_installs counter",
            r#"istio_cni_installs_total{result="SUCCESS"} 1"#,
            r#"istio_cni_installs_total{result="CREATE_CNI_CONFIG_FAILURE"} 1"#,
            r#"istio_cni_plugin_requests_total{response_code="200"} 2"#,
            r#"istio_cni_plugin_requests_total{response_code="500"} 1"#,
            r#"nodeagent_reconcile_events_total{type="add"} 1"#,
            r#"nodeagent_reconcile_events_total{type="delete"} 1"#,
            "# TYPE ztunnel_connected gauge",
            r#"nodetunnel_cni_repairs_total{kind="rules"} 1"#,
            "nodetunnel_cni_unprotected_pods 2",
        ] {
            assert!(has(&text, line), "{line} in:\n{text}");
        }
    }
}
