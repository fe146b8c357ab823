//! SKELETON (helper-state): conversions between the store's types and Istio's xDS protos.

use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload::Address;

use super::local::Defaults;
use super::types::{Policy, Service, Workload};

/// What one `istio.workload.Address` resource holds.
#[derive(Debug)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("resource {name:?}: {message}")]
    Invalid { name: String, message: String },
}

/// Converts a received Address resource named `name`; the name must be the workload's uid or
/// the service's `namespace/hostname`.
pub fn address_from_proto(
    name: &str,
    address: Address,
    defaults: &Defaults,
) -> Result<AddressResource, ProtoError> {
    let _ = (name, address, defaults);
    unimplemented!("skeleton")
}

/// Converts a received Authorization resource named `name` (`namespace/name`).
pub fn authorization_from_proto(name: &str, auth: Authorization) -> Result<Policy, ProtoError> {
    let _ = (name, auth);
    unimplemented!("skeleton")
}

pub fn workload_to_proto(workload: &Workload) -> Address {
    let _ = workload;
    unimplemented!("skeleton")
}

pub fn service_to_proto(service: &Service) -> Address {
    let _ = service;
    unimplemented!("skeleton")
}

pub fn policy_to_proto(policy: &Policy) -> Authorization {
    let _ = policy;
    unimplemented!("skeleton")
}
