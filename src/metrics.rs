//! Prometheus metrics with Istio's names and labels, so existing dashboards keep working, plus
//! what a team alerts on: ztunnel's names where ztunnel has the metric, `nodetunnel_*` where it
//! has none.
//!
//! The data path only moves atomics (counters, gauges, one label-set lookup per connection);
//! everything that needs a walk over shared state (certificates, pods, xDS, `/proc`) is a
//! collector computed when `/metrics` is scraped, on the admin thread.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hbone::pool::PoolGauges;
use crate::identity::SecretManager;
use crate::state::{Service, Workload};
use crate::xds::XdsHandle;

mod certs;
mod inpod;
mod outcome;
mod process;
mod xds;

pub use inpod::{ActivePods, InpodMetrics};
pub use outcome::{ConnectionOutcome, OutcomeLabels};

/// What a label reads when its value is not known, as ztunnel writes it (never empty).
pub const UNKNOWN: &str = "unknown";

/// Labels of `istio_tcp_*`: Istio's standard TCP set as ztunnel emits it (same names, same
/// order, `unknown` for what is not known), which Kiali and Istio's dashboards group by.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct ConnectionLabels {
    /// `source` on the client-side tunnel, `destination` on the server side.
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    /// The identity the source proved (or, outbound, will prove) over mTLS; unknown without.
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    /// The service's hostname.
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    /// `mutual_tls` when HBONE carried the connection, else `unknown`.
    pub connection_security_policy: &'static str,
    /// `source_region`, `source_zone`, `destination_region`, `destination_zone`: written once
    /// either end is a known workload (ztunnel's rule), each `unknown` when not set.
    pub locality: Option<LocalityLabels>,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct LocalityLabels {
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

impl ConnectionLabels {
    /// The source workload's names. The principal is not taken from here: it is only what
    /// mTLS proves (set by the caller), as in ztunnel.
    pub fn with_source(mut self, w: Option<&Workload>) -> Self {
        if let Some(w) = w {
            self.source_workload = workload_name(w);
            self.source_canonical_service = w.canonical_name.clone();
            self.source_canonical_revision = w.canonical_revision.clone();
            self.source_workload_namespace = w.namespace.clone();
            self.source_app = w.canonical_name.clone();
            self.source_version = w.canonical_revision.clone();
            self.source_cluster = w.cluster_id.clone();
            let locality = self.locality.get_or_insert_with(Default::default);
            locality.source_region = w.locality.region.clone();
            locality.source_zone = w.locality.zone.clone();
        }
        self
    }

    pub fn with_destination(mut self, w: Option<&Workload>) -> Self {
        if let Some(w) = w {
            self.destination_workload = workload_name(w);
            self.destination_canonical_service = w.canonical_name.clone();
            self.destination_canonical_revision = w.canonical_revision.clone();
            self.destination_workload_namespace = w.namespace.clone();
            self.destination_principal = w.identity().to_string();
            self.destination_app = w.canonical_name.clone();
            self.destination_version = w.canonical_revision.clone();
            self.destination_cluster = w.cluster_id.clone();
            let locality = self.locality.get_or_insert_with(Default::default);
            locality.destination_region = w.locality.region.clone();
            locality.destination_zone = w.locality.zone.clone();
        }
        self
    }

    /// The service the client addressed (outbound: the VIP's; inbound: the one ztunnel would
    /// guess, see `proxy::access::inbound_service`).
    pub fn with_destination_service(mut self, s: Option<&Service>) -> Self {
        if let Some(s) = s {
            self.destination_service = s.hostname.clone();
            self.destination_service_name = s.name.clone();
            self.destination_service_namespace = s.namespace.clone();
        }
        self
    }
}

fn or_unknown(value: &str) -> &str {
    if value.is_empty() {
        UNKNOWN
    } else {
        value
    }
}

impl EncodeLabelSet for ConnectionLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let labels = [
            ("reporter", self.reporter),
            ("source_workload", or_unknown(&self.source_workload)),
            (
                "source_canonical_service",
                or_unknown(&self.source_canonical_service),
            ),
            (
                "source_canonical_revision",
                or_unknown(&self.source_canonical_revision),
            ),
            (
                "source_workload_namespace",
                or_unknown(&self.source_workload_namespace),
            ),
            ("source_principal", or_unknown(&self.source_principal)),
            ("source_app", or_unknown(&self.source_app)),
            ("source_version", or_unknown(&self.source_version)),
            ("source_cluster", or_unknown(&self.source_cluster)),
            ("destination_service", or_unknown(&self.destination_service)),
            (
                "destination_service_namespace",
                or_unknown(&self.destination_service_namespace),
            ),
            (
                "destination_service_name",
                or_unknown(&self.destination_service_name),
            ),
            (
                "destination_workload",
                or_unknown(&self.destination_workload),
            ),
            (
                "destination_canonical_service",
                or_unknown(&self.destination_canonical_service),
            ),
            (
                "destination_canonical_revision",
                or_unknown(&self.destination_canonical_revision),
            ),
            (
                "destination_workload_namespace",
                or_unknown(&self.destination_workload_namespace),
            ),
            (
                "destination_principal",
                or_unknown(&self.destination_principal),
            ),
            ("destination_app", or_unknown(&self.destination_app)),
            ("destination_version", or_unknown(&self.destination_version)),
            ("destination_cluster", or_unknown(&self.destination_cluster)),
            ("request_protocol", self.request_protocol),
            ("response_flags", self.response_flags),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ];
        for label in labels {
            label.encode(encoder.encode_label())?;
        }
        if let Some(l) = &self.locality {
            for label in [
                ("source_region", or_unknown(&l.source_region)),
                ("source_zone", or_unknown(&l.source_zone)),
                ("destination_region", or_unknown(&l.destination_region)),
                ("destination_zone", or_unknown(&l.destination_zone)),
            ] {
                label.encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// Istio reports the owning workload (e.g. the Deployment) when known, else the pod name.
fn workload_name(w: &Workload) -> String {
    if w.workload_name.is_empty() {
        w.name.clone()
    } else {
        w.workload_name.clone()
    }
}

/// Labels of `istio_build`: ztunnel's, so the Istio dashboards count this tunnel among the
/// ztunnels of a release.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// `ztunnel`: nodetunnel stands in for it, and the dashboards select on this value.
    component: &'static str,
    /// The Istio release (`ISTIO_META_ISTIO_VERSION`), `unknown` when not given.
    tag: String,
}

/// Labels of `nodetunnel_policy_denials_total`: which policy decided, and for which workload.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// The matching DENY policy (`namespace/name`); empty when no ALLOW policy matched.
    pub policy: String,
    /// `deny_policy` or `no_allow_match`.
    pub reason: &'static str,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// `HBONE` (mTLS) or `TCP` (plaintext on 15006).
    pub protocol: &'static str,
}

/// Holds one unit of a gauge (`inc` now, `dec` on drop), for "currently open" gauges whose
/// owner ends on several paths.
#[must_use = "the gauge is decremented when the guard drops"]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn hold(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Labels of `nodetunnel_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    /// The crate version the binary was built from.
    version: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub connections_opened: Family<ConnectionLabels, Counter>,
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// Connections that ended in a failure before or while reaching the upstream (ztunnel's
    /// `istio_tcp_connections_failed_total`).
    pub connections_failed: Family<ConnectionLabels, Counter>,
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    pub received_bytes: Family<ConnectionLabels, Counter>,
    /// HBONE connections this tunnel opened to peers (outbound pool).
    pub hbone_connections_opened: Counter,
    /// HBONE connections peers opened to this tunnel.
    pub hbone_connections_accepted: Counter,
    pub active_connections: Gauge,
    /// Inbound connections the authorize step refused, by deciding policy.
    pub policy_denials: Family<DenialLabels, Counter>,
    /// Every proxied connection once, when it ends, by outcome.
    pub connection_outcomes: Family<OutcomeLabels, Counter>,
    /// The outbound HBONE pools' connections and streams (all pools of the process).
    pub pool: PoolGauges,
    /// HBONE connections from peers currently open on 15008.
    pub hbone_inbound_connections: Gauge,
    /// Shared mode's pods and agent connection (registered by [`Metrics::register_inpod`]).
    pub inpod: InpodMetrics,
    /// DNS proxy queries received (ztunnel's `istio_dns_requests_total`), of which
    /// forwarded upstream (`istio_dns_upstream_requests_total`) and failed there
    /// (`istio_dns_upstream_failures_total`: timeout, error, budget exhausted → SERVFAIL).
    /// Answered from the mesh state = requests − upstream requests (− malformed ones).
    pub dns_requests: Counter,
    pub dns_upstream_requests: Counter,
    pub dns_upstream_failures: Counter,
    /// The Istio release reported in `istio_build` and `/config_dump`'s `version`.
    istio_version: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics reporting an unknown Istio release in `istio_build`.
    pub fn new() -> Metrics {
        Metrics::for_istio_version(None)
    }

    /// Metrics whose `istio_build` carries `istio_version` (`unknown` when `None` or empty).
    pub fn for_istio_version(istio_version: Option<&str>) -> Metrics {
        let istio_version = or_unknown(istio_version.unwrap_or_default()).to_string();
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            connections_failed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            hbone_connections_opened: Counter::default(),
            hbone_connections_accepted: Counter::default(),
            active_connections: Gauge::default(),
            policy_denials: Family::default(),
            connection_outcomes: Family::default(),
            pool: PoolGauges::default(),
            hbone_inbound_connections: Gauge::default(),
            inpod: InpodMetrics::default(),
            dns_requests: Counter::default(),
            dns_upstream_requests: Counter::default(),
            dns_upstream_failures: Counter::default(),
            istio_version,
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.connections_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.connections_closed.clone(),
        );
        istio.register(
            "tcp_connections_failed",
            "TCP connections that failed to establish or were refused",
            m.connections_failed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent by the client during a TCP connection",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received by the client during a TCP connection",
            m.received_bytes.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel",
                tag: m.istio_version.clone(),
            })
            .set(1);
        istio.register("build", "Istio component build info", build);
        istio.register(
            "dns_requests",
            "DNS queries received by the DNS proxy",
            m.dns_requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "DNS queries the DNS proxy forwarded to the upstream resolver",
            m.dns_upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "DNS queries the upstream resolver did not answer (SERVFAIL to the client)",
            m.dns_upstream_failures.clone(),
        );
        let own = registry.sub_registry_with_prefix("nodetunnel");
        own.register(
            "hbone_connections_opened",
            "HBONE (mTLS HTTP/2) connections opened to peers",
            m.hbone_connections_opened.clone(),
        );
        own.register(
            "hbone_connections_accepted",
            "HBONE connections accepted from peers",
            m.hbone_connections_accepted.clone(),
        );
        own.register(
            "policy_denials",
            "Inbound connections refused by authorization policy, by the policy that decided",
            m.policy_denials.clone(),
        );
        own.register(
            "active_connections",
            "Proxied connections currently open",
            m.active_connections.clone(),
        );
        own.register(
            "connections",
            "Proxied connections by how they ended (counted when they end): completed, denied, failed, with the access log's flag",
            m.connection_outcomes.clone(),
        );
        own.register(
            "hbone_pool_connections",
            "HBONE connections held by the outbound pools",
            m.pool.connections.clone(),
        );
        own.register(
            "hbone_pool_streams",
            "CONNECT streams open on the outbound pools' connections",
            m.pool.streams.clone(),
        );
        own.register(
            "hbone_inbound_connections",
            "HBONE connections from peers currently open",
            m.hbone_inbound_connections.clone(),
        );
        let info: Family<VersionLabel, Gauge> = Family::default();
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        own.register("build_info", "This nodetunnel build (always 1)", info);
        registry.register_collector(Box::new(process::ProcessCollector));
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    /// The Istio release this tunnel reports (`unknown` when not configured).
    pub fn istio_version(&self) -> &str {
        &self.istio_version
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the xDS client's counters, read from its handle at each scrape.
    pub fn register_xds(&self, xds: XdsHandle) {
        self.registry()
            .register_collector(Box::new(xds::XdsCollector(xds)));
    }

    /// Adds each identity's certificate expiry and the count of identities per certificate
    /// state, read from `certs` at each scrape.
    pub fn register_certificates(&self, certs: Arc<SecretManager>) {
        self.registry()
            .register_collector(Box::new(certs::CertificateCollector(certs)));
    }

    /// Adds shared mode's metrics ([`InpodMetrics`] and `active`'s pod count).
    pub fn register_inpod(&self, active: ActivePods) {
        self.inpod.register(&mut self.registry(), active);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests;
