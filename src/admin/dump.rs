//! `GET /config_dump` on the admin port: the tunnel's state in ztunnel's schema, so Istio's
//! tools read it as they read ztunnel's (`istioctl ztunnel-config
//! workloads|services|policies|certificates|all` decodes `workloads`, `services`, `policies`,
//! `certificates` and `workloadState`; see `mesh` and `certs` for each shape).
//!
//! Top-level keys as ztunnel writes them: `workloads`, `services`, `policies`, `certificates`,
//! `workloadState` (shared mode's pods by uid) and `version`. nodetunnel's own sections sit
//! under their own keys, which istioctl ignores: `certificateIssuances`, `pods` and `xds`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::AdminState;
use crate::identity::Identity;
use crate::inpod::manager::PodSummary;
use crate::xds::XdsHandle;

mod certs;
mod mesh;
#[cfg(test)]
mod tests;

/// The whole answer. Built under the store's read lock, which it borrows from.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    workloads: Vec<mesh::WorkloadDump<'a>>,
    services: Vec<mesh::ServiceDump<'a>>,
    policies: Vec<mesh::PolicyDump<'a>>,
    certificates: Vec<certs::CertsDump>,
    workload_state: BTreeMap<String, WorkloadState>,
    version: Version<'a>,
    // nodetunnel's own sections.
    certificate_issuances: u64,
    pods: Vec<serde_json::Value>,
    xds: serde_json::Value,
}

/// One running pod as ztunnel's in-pod admin handler shows it (`workloadState.<uid>`).
#[derive(Debug, Serialize)]
struct WorkloadState {
    /// A pod listed here has its proxy up (pods being set up or torn down are not listed).
    state: &'static str,
    info: WorkloadInfo,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadInfo {
    name: String,
    namespace: String,
    service_account: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    trust_domain: String,
}

/// ztunnel's `version` section, with the parts a nodetunnel build knows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Version<'a> {
    version: &'static str,
    build_profile: &'static str,
    /// The Istio release this tunnel stands in for (`ISTIO_META_ISTIO_VERSION`), as in the
    /// `tag` label of `istio_build`.
    istio_version: &'a str,
}

/// Serializes the dump. Every part is plain data, so encoding cannot fail short of a bug; the
/// caller still answers 500 naming the error rather than panicking.
pub(super) fn config_dump(admin: &AdminState) -> Result<Vec<u8>, serde_json::Error> {
    // Each lock is held only for its own part, never two at once, so the dump cannot stall a
    // writer that takes them in another order.
    let (workload_state, pods) = {
        let pods = admin.pods.lock().unwrap_or_else(|e| e.into_inner());
        let state = pods
            .iter()
            .map(|(uid, pod)| (uid.clone(), workload_state(pod)))
            .collect();
        let summary = pods
            .iter()
            .map(|(uid, pod)| {
                serde_json::json!({
                    "uid": uid,
                    "workload": pod.workload,
                    "identity": pod.identity,
                    "netns": pod.netns.to_string(),
                    "connections": pod.connections.len(),
                })
            })
            .collect();
        (state, summary)
    };
    let certificates = certs::certificates(&admin.certs);
    let xds = admin
        .xds
        .as_ref()
        .map_or(serde_json::Value::Null, XdsHandle::snapshot);
    let store = admin.state.read();
    let dump = ConfigDump {
        workloads: mesh::workloads(&store),
        services: mesh::services(&store),
        policies: mesh::policies(&store),
        certificates,
        workload_state,
        version: Version {
            version: env!("CARGO_PKG_VERSION"),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            istio_version: admin.metrics.istio_version(),
        },
        certificate_issuances: admin.certs.issuance_count(),
        pods,
        xds,
    };
    serde_json::to_vec_pretty(&dump)
}

/// The pod's `<namespace>/<name>` and identity, split into ztunnel's `info` fields.
fn workload_state(pod: &PodSummary) -> WorkloadState {
    let (namespace, name) = pod
        .workload
        .split_once('/')
        .unwrap_or(("", pod.workload.as_str()));
    let identity = pod.identity.parse::<Identity>().ok();
    WorkloadState {
        state: "Up",
        info: WorkloadInfo {
            name: name.to_string(),
            namespace: namespace.to_string(),
            service_account: identity
                .as_ref()
                .map(|i| i.service_account.clone())
                .unwrap_or_default(),
            trust_domain: identity.map(|i| i.trust_domain).unwrap_or_default(),
        },
    }
}
