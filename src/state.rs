//! The mesh state the data path reads: workloads, services and authorization policies,
//! indexed by workload IP, service VIP, hostname and uid. Filled from a local YAML file
//! (`local`) or from xDS resources (converted by `crate::xds`) applied as a `StoreDelta`;
//! `defaults` holds what both agree on. Nothing here imports the xDS client or the control
//! plane: they depend on `state`, never the reverse.

mod addresses;
mod balance;
mod defaults;
#[cfg(test)]
pub(crate) mod fixtures;
mod local;
mod network_gateway;
mod resolve;
mod store;
mod types;
mod waypoint;

pub(crate) use addresses::{unusable_address, unusable_range};
pub(crate) use defaults::workload_type_name;
pub use defaults::Defaults;
pub(crate) use local::load_file;
pub use local::{load_str, LoadError, Loaded};
pub(crate) use network_gateway::{
    DoubleHbone, GatewayForwardError, NetworkGatewayError, RemoteEndpoint,
};
pub(crate) use resolve::{HostnameEndpoint, Resolution, ResolveError, Upstream};
pub use store::{
    preferred_claimant, Applicable, ApplicablePolicies, StateHandle, StateWriteGuard, Store,
    StoreDelta,
};
pub use types::{
    check_policy_key, GatewayAddress, GatewayDestination, HealthStatus, InboundProtocol, IpFamily,
    LbHealthPolicy, LbMode, LbScope, LoadBalancing, Locality, NamespacedHostname, NetworkAddress,
    NetworkCidr, Policy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, Service,
    ServiceAccountMatch, StringMatch, Workload, DEFAULT_CAPACITY, DEFAULT_GATEWAY_HBONE_PORT,
};
pub(crate) use waypoint::{WaypointError, WaypointHop};
