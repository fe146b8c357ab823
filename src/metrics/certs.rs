//! Certificate state as metrics, computed from the certificate manager at each scrape: how
//! long each identity's certificate has left (what an expiry alert needs) and how many
//! identities are in each of ztunnel's three states (an `unavailable` one means its pods
//! cannot talk).

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::identity::{CertState, SecretManager};

#[derive(Debug)]
pub struct CertificateCollector(pub Arc<SecretManager>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Seconds from `now` until `not_after`: negative once it has passed.
pub fn seconds_until(not_after: SystemTime, now: SystemTime) -> f64 {
    match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

impl Collector for CertificateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = self.0.certificate_states();
        let now = SystemTime::now();
        let mut expiry = encoder.encode_descriptor(
            "nodetunnel_certificate_expiry_seconds",
            "Seconds until the identity's current certificate expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        let mut counts = [("available", 0i64), ("initializing", 0), ("unavailable", 0)];
        for (identity, state) in &states {
            let index = match state {
                CertState::Available(cert) => {
                    let label = IdentityLabel {
                        identity: identity.to_string(),
                    };
                    ConstGauge::new(seconds_until(cert.not_after, now))
                        .encode(expiry.encode_family(&label)?)?;
                    0
                }
                CertState::Initializing => 1,
                CertState::Unavailable(_) => 2,
            };
            counts[index].1 += 1;
        }
        let mut family = encoder.encode_descriptor(
            "nodetunnel_certificates",
            "Identities whose certificate the tunnel holds or is fetching, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in counts {
            ConstGauge::new(count).encode(family.encode_family(&StateLabel { state })?)?;
        }
        Ok(())
    }
}
