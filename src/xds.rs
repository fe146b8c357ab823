//! The delta xDS client: one ADS stream to the control plane (`XDS_ADDRESS`), subscribed to
//! workload addresses and authorization policies, applied into the same store the local file
//! fills.
//!
//! SKELETON (helper-xds).

pub mod client;

use crate::grpc::GrpcTarget;

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
    /// `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`
    pub cluster_domain: String,
}

impl NodeInfo {
    /// `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<cluster domain>`, the form istiod expects.
    pub fn node_id(&self) -> String {
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
