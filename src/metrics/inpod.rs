//! Shared mode's metrics: the enrolled pods (ztunnel's `workload_manager_*` names, so its
//! dashboards and alerts apply) and the node agent connection (ours: ztunnel has none).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What the in-pod manager moves as pods and agent connections come and go (a handful of
/// atomics, touched per ZDS message, never per connection).
#[derive(Clone, Debug, Default)]
pub struct InpodMetrics {
    /// 1 while the ZDS connection to the node agent is up.
    pub zds_connected: Gauge,
    /// ZDS connections established since start.
    pub zds_connects: Counter,
    pub proxies_started: Counter,
    pub proxies_stopped: Counter,
}

/// How many pods have a running proxy, asked at each scrape of whoever owns the pod table
/// (a closure, so this module does not depend on `inpod`).
pub struct ActivePods(pub Box<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for ActivePods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActivePods")
    }
}

impl Collector for ActivePods {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new((self.0)() as i64).encode(encoder.encode_descriptor(
            "workload_manager_active_proxy_count",
            "Enrolled pods with a running proxy",
            None,
            MetricType::Gauge,
        )?)
    }
}

impl InpodMetrics {
    /// Adds these metrics and the pod count to `registry` (shared mode only: in dedicated mode
    /// there is no agent, and a ZDS gauge stuck at 0 would page someone).
    pub fn register(&self, registry: &mut Registry, active: ActivePods) {
        registry.register_collector(Box::new(active));
        let manager = registry.sub_registry_with_prefix("workload_manager");
        manager.register(
            "proxies_started",
            "Pod proxies started",
            self.proxies_started.clone(),
        );
        manager.register(
            "proxies_stopped",
            "Pod proxies stopped",
            self.proxies_stopped.clone(),
        );
        let own = registry.sub_registry_with_prefix("nodetunnel");
        own.register(
            "zds_connected",
            "1 while the ZDS connection to the node agent is established",
            self.zds_connected.clone(),
        );
        own.register(
            "zds_connects",
            "ZDS connections to the node agent established since start",
            self.zds_connects.clone(),
        );
    }
}
