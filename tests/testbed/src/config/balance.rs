//! What a mesh file says about endpoint choice: a workload's `locality`, and a service's
//! `loadBalancer` in the local config's shape (ztunnel's: `routingPreferences`, `mode`,
//! `healthPolicy`, enum values spelled as in ztunnel's `LOCAL_XDS_PATH` files).

use std::fmt::Write as _;

use super::quote;

/// A workload's failure domain (`locality: {region, zone, subzone}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn new(region: &str, zone: &str, subzone: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }

    pub(super) fn as_yaml(&self) -> String {
        format!(
            "{{region: {}, zone: {}, subzone: {}}}",
            quote(&self.region),
            quote(&self.zone),
            quote(&self.subzone)
        )
    }
}

/// One part of the client's location an endpoint may share (`istio.workload.LoadBalancing.Scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

/// `istio.workload.LoadBalancing.Mode`; `Standard` is the proto's UNSPECIFIED_MODE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbMode {
    Standard,
    Strict,
    Failover,
    Passthrough,
}

/// `istio.workload.LoadBalancing.HealthPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

/// A service's `loadBalancer:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancer {
    pub routing_preferences: Vec<LbScope>,
    pub mode: LbMode,
    pub health_policy: LbHealthPolicy,
}

impl LoadBalancer {
    /// Preferences ignored; only the health policy (and capacities) shape the choice.
    pub fn standard() -> LoadBalancer {
        LoadBalancer::new(LbMode::Standard, &[])
    }

    /// Only endpoints sharing every scope in `preferences` with the client.
    pub fn strict(preferences: &[LbScope]) -> LoadBalancer {
        LoadBalancer::new(LbMode::Strict, preferences)
    }

    /// The endpoints sharing the most leading scopes of `preferences` with the client.
    pub fn failover(preferences: &[LbScope]) -> LoadBalancer {
        LoadBalancer::new(LbMode::Failover, preferences)
    }

    fn new(mode: LbMode, preferences: &[LbScope]) -> LoadBalancer {
        LoadBalancer {
            routing_preferences: preferences.to_vec(),
            mode,
            health_policy: LbHealthPolicy::OnlyHealthy,
        }
    }

    /// Not-ready endpoints are candidates too (`healthPolicy: AllowAll`).
    pub fn allow_all(mut self) -> LoadBalancer {
        self.health_policy = LbHealthPolicy::AllowAll;
        self
    }

    /// `  loadBalancer: {...}` (one line, in a service entry).
    pub(super) fn write_yaml(&self, y: &mut String) {
        let scopes: Vec<String> = self
            .routing_preferences
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        let _ = writeln!(
            y,
            "  loadBalancer: {{routingPreferences: [{}], mode: {:?}, healthPolicy: {:?}}}",
            scopes.join(", "),
            self.mode,
            self.health_policy
        );
    }
}
