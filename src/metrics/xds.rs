//! The xDS client's state as metrics, read from its handle at each scrape.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::xds::{TypeStats, XdsHandle};

/// The xDS client's state as metrics. Istio's `istio_xds_message_total{url}` counts responses
/// per type; the `nodetunnel_xds_*` series add what an operator needs to see a stuck or
/// rejected sync: connection state, resource counts, ACK/NACK split and apply time.
#[derive(Debug)]
pub struct XdsCollector(pub XdsHandle);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: &'static str,
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let types = [
            (
                nodetunnel_proto::WORKLOAD_ADDRESS_TYPE_URL,
                &stats.addresses,
            ),
            (
                nodetunnel_proto::AUTHORIZATION_TYPE_URL,
                &stats.authorizations,
            ),
        ];
        let per_type = |encoder: &mut DescriptorEncoder,
                        name: &str,
                        help: &str,
                        counter: bool,
                        value: &dyn Fn(&TypeStats) -> u64|
         -> Result<(), std::fmt::Error> {
            let kind = if counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (url, t) in types {
                let label = UrlLabel { url };
                let metric = family.encode_family(&label)?;
                if counter {
                    ConstCounter::new(value(t)).encode(metric)?;
                } else {
                    ConstGauge::new(value(t) as i64).encode(metric)?;
                }
            }
            Ok(())
        };
        per_type(
            &mut encoder,
            "istio_xds_message",
            "xDS responses received, per type URL",
            true,
            &|t| t.acks + t.nacks,
        )?;
        per_type(
            &mut encoder,
            "nodetunnel_xds_nacks",
            "xDS responses rejected (NACKed), per type URL",
            true,
            &|t| t.nacks,
        )?;
        per_type(
            &mut encoder,
            "nodetunnel_xds_resources",
            "Resources currently accepted from the control plane, per type URL",
            false,
            &|t| t.resources as u64,
        )?;
        // Only the types that had one: a 0 timestamp would read as "1970", not "never".
        for (name, help, when) in [
            (
                "nodetunnel_xds_last_ack_timestamp_seconds",
                "When the last response of this type was accepted (ACKed), Unix seconds",
                (|t: &TypeStats| t.last_ack) as fn(&TypeStats) -> Option<SystemTime>,
            ),
            (
                "nodetunnel_xds_last_nack_timestamp_seconds",
                "When the last response of this type was rejected (NACKed), Unix seconds",
                |t: &TypeStats| t.last_nack,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (url, t) in types {
                if let Some(at) = when(t) {
                    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                    ConstGauge::new(seconds.as_secs_f64())
                        .encode(family.encode_family(&UrlLabel { url })?)?;
                }
            }
        }
        let gauge = ConstGauge::new(i64::from(stats.connected));
        gauge.encode(encoder.encode_descriptor(
            "nodetunnel_xds_connected",
            "1 while the xDS stream to the control plane is established",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(stats.connects).encode(encoder.encode_descriptor(
            "nodetunnel_xds_connects",
            "xDS streams established since start",
            None,
            MetricType::Counter,
        )?)?;
        let apply = stats.last_apply_duration.map_or(0.0, |d| d.as_secs_f64());
        ConstGauge::new(apply).encode(encoder.encode_descriptor(
            "nodetunnel_xds_last_apply_seconds",
            "How long the last accepted xDS response held the state lock while applying",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
