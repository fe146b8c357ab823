//! The delta xDS client: one ADS stream to the control plane (`XDS_ADDRESS`), subscribed to
//! workload addresses and authorization policies, applied into the same store the local file
//! fills.
//!
//! The flow, one file per step:
//! `client` (connect, subscribe, reconnect) → `response` (decode, validate, apply one push
//! all-or-nothing) → `status` (what was accepted, ACK/NACK counters, the handle the rest of the
//! tunnel reads). `convert` turns received resources into the store's types; `node` builds the
//! identity we present; `backoff` paces reconnects.
//!
//! The protocol is Envoy's incremental ("delta") xDS over the aggregated stream
//! `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`, the one
//! istiod serves to ztunnel.

mod backoff;
mod client;
mod convert;
mod node;
pub(crate) mod response;
mod status;

use std::collections::BTreeMap;

use crate::grpc::{GrpcError, GrpcTarget};

pub use client::XdsClient;
/// The xDS → store conversions; public so the control plane's tests can check that what it
/// encodes decodes back to the same workloads and policies.
pub use convert::{address_from_proto, authorization_from_proto, AddressResource};
pub use status::{TypeStats, XdsHandle, XdsStats};

/// The two resource types of Istio's ambient xDS API: what the tunnel subscribes to and what
/// `nodetunnel-control` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `istio.workload.Address`: workloads (named by uid) and services (`namespace/hostname`).
    Address,
    /// `istio.security.Authorization`: policies (`namespace/name`).
    Authorization,
}

impl ResourceType {
    pub const ALL: [ResourceType; 2] = [ResourceType::Address, ResourceType::Authorization];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Address => nodetunnel_proto::WORKLOAD_ADDRESS_TYPE_URL,
            ResourceType::Authorization => nodetunnel_proto::AUTHORIZATION_TYPE_URL,
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The message name, for the control plane's status endpoint.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Address => "Address",
            ResourceType::Authorization => "Authorization",
        }
    }

    /// Plural, for the tunnel's logs and snapshot.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ResourceType::Address => "addresses",
            ResourceType::Authorization => "authorizations",
        }
    }
}

/// Who this tunnel is to the control plane (Istio's node id and metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `POD_NAME`
    pub pod_name: String,
    /// `POD_NAMESPACE`
    pub pod_namespace: String,
    /// `INSTANCE_IP`
    pub instance_ip: String,
    /// `NODE_NAME`
    pub node_name: String,
    /// `CLUSTER_ID`
    pub cluster_id: String,
    /// `CLUSTER_DOMAIN` (usually `cluster.local`), the last part of the node id.
    pub cluster_domain: String,
    /// Further node metadata, sent as given: ztunnel forwards every `ISTIO_META_<KEY>`
    /// environment variable as `<KEY>`, and operators use that to pass flags istiod reads
    /// (e.g. `DNS_CAPTURE`). The keys above take precedence over an entry here.
    pub extra_metadata: BTreeMap<String, String>,
}

impl NodeInfo {
    /// `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<cluster domain>`, the form istiod expects.
    pub(crate) fn node_id(&self) -> String {
        format!(
            "ztunnel~{}~{}.{}~{}.svc.{}",
            self.instance_ip,
            self.pod_name,
            self.pod_namespace,
            self.pod_namespace,
            self.cluster_domain
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsConfig {
    pub target: GrpcTarget,
    pub node: NodeInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The address or root certificate is unusable; found at start-up so the tunnel fails
    /// fast instead of retrying a configuration that can never work.
    #[error("cannot set up the xDS client: {0}")]
    Channel(#[from] GrpcError),
}
