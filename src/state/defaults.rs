//! What both ways into the store agree on, so a workload reads the same whether it came from a
//! local file (`local`) or from xDS (`crate::xds`): the defaults istiod fills into empty
//! identity fields, and the spelling of workload type names.

use nodetunnel_proto::istio::workload::WorkloadType;

use super::types::Workload;

/// Defaults applied to fields the file leaves empty (as istiod would fill them).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub trust_domain: String,
    pub cluster_id: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }
}

impl Defaults {
    /// Fills the fields a control plane or file may leave empty, the way istiod does, so a
    /// workload reads the same whether it came from a local file or from xDS: trust domain and
    /// cluster id from `self`, service account `default`, workload type `deployment` (the
    /// proto's zero value).
    pub(crate) fn fill_workload(&self, workload: &mut Workload) {
        fill(&mut workload.trust_domain, &self.trust_domain);
        fill(&mut workload.cluster_id, &self.cluster_id);
        fill(&mut workload.service_account, "default");
        fill(&mut workload.workload_type, "deployment");
    }
}

fn fill(field: &mut String, default: &str) {
    if field.is_empty() {
        *field = default.to_string();
    }
}

/// Istio's name for a workload type as the store keeps it (lowercase, as ztunnel shows it).
pub(crate) fn workload_type_name(t: WorkloadType) -> String {
    t.as_str_name().to_ascii_lowercase()
}

/// Parses a workload type name case-insensitively (`deployment`, `cronjob`, `pod`, `job`).
pub(crate) fn parse_workload_type(name: &str) -> Option<String> {
    WorkloadType::from_str_name(&name.to_ascii_uppercase()).map(workload_type_name)
}
