//! The mesh state the data path reads: workloads, services and authorization policies,
//! indexed by workload IP, service VIP, hostname and uid. Filled from a local YAML file
//! (`local`) or from xDS resources converted by `proto` and applied as a `StoreDelta`.

#[cfg(test)]
pub(crate) mod fixtures;
mod local;
pub mod proto;
mod resolve;
mod store;
mod types;

pub use local::{load_file, load_str, Defaults, LoadError, Loaded};
pub use resolve::{ResolveError, Upstream};
pub use store::{StateHandle, Store, StoreDelta, StoreError};
pub use types::{
    HealthStatus, InboundProtocol, NamespacedHostname, NetworkAddress, Policy, PolicyAction,
    PolicyClause, PolicyMatch, PolicyRule, PolicyScope, Service, ServiceAccountMatch, StringMatch,
    Workload,
};
