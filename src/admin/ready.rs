//! The certificate gate of shared mode's readiness: ready only while every running pod's
//! identity has a certificate that is valid now. The start-up gates (`app.rs`: xDS sync, the
//! agent's snapshot) say the config is in place; this says the pods can actually talk, and
//! it is computed when the probe asks, from the pod table and the certificate manager, so
//! it follows pods and renewals without a flag anyone must remember to set.

use std::time::SystemTime;

use crate::identity::{CertState, Identity, SecretManager};
use crate::inpod::manager::PodTable;

/// Why the pods are not all served with a valid certificate, naming the first pod (by uid
/// order) whose identity lacks one; `None` when all have one.
pub fn missing_certificate(pods: &PodTable, certs: &SecretManager) -> Option<String> {
    let wanted: Vec<(String, String)> = pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|p| (p.workload.clone(), p.identity.clone()))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    first_missing(&wanted, &certs.certificate_states(), SystemTime::now())
}

/// [`missing_certificate`] on `(workload, identity)` pairs and the manager's states at `now`.
fn first_missing(
    pods: &[(String, String)],
    states: &[(Identity, CertState)],
    now: SystemTime,
) -> Option<String> {
    pods.iter().find_map(|(workload, identity)| {
        let state = states
            .iter()
            .find(|(id, _)| id.to_string() == *identity)
            .map(|(_, s)| s);
        let why = match state {
            Some(CertState::Available(cert)) if cert.is_valid_at(now) => return None,
            Some(CertState::Available(_)) => "its certificate has expired".to_string(),
            Some(CertState::Unavailable(error)) => format!("the last issuance failed: {error}"),
            Some(CertState::Initializing) | None => "the first issuance is not done".to_string(),
        };
        Some(format!(
            "waiting for the certificate of {identity} (pod {workload}): {why}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::admin::AdminState;
    use crate::identity::{CertificateSource, LocalCa};
    use crate::inpod::manager::PodSummary;
    use nodetunnel_base::readiness::Readiness;

    #[tokio::test]
    async fn every_pod_identity_needs_a_valid_certificate() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let certs = SecretManager::new(
            CertificateSource::Local(Arc::new(ca)),
            Duration::from_secs(3600),
        );
        let a = Identity::new("cluster.local", "default", "a");
        let b = Identity::new("cluster.local", "default", "b");
        let pods = [
            ("default/a".to_string(), a.to_string()),
            ("default/b".to_string(), b.to_string()),
        ];
        certs.fetch(&a).await.unwrap();
        let now = SystemTime::now();
        assert_eq!(
            first_missing(&pods, &certs.certificate_states(), now).as_deref(),
            Some(
                "waiting for the certificate of spiffe://cluster.local/ns/default/sa/b \
                 (pod default/b): the first issuance is not done"
            )
        );
        certs.fetch(&b).await.unwrap();
        assert_eq!(first_missing(&pods, &certs.certificate_states(), now), None);
        let later = now + Duration::from_secs(7200);
        assert!(first_missing(&pods, &certs.certificate_states(), later)
            .is_some_and(|why| why.ends_with("(pod default/a): its certificate has expired")));
    }

    /// The probe's answer: the start-up gates first, then the pods' certificates, each
    /// computed when asked (a pod added later makes the tunnel not ready until its
    /// certificate is there).
    #[tokio::test]
    async fn the_probe_waits_for_the_gates_then_for_every_pods_certificate() {
        let ca = LocalCa::generate("cluster.local").unwrap();
        let certs = SecretManager::new(
            CertificateSource::Local(Arc::new(ca)),
            Duration::from_secs(3600),
        );
        let mut readiness = Readiness::new();
        let snapshot = readiness.condition("waiting for the node agent's snapshot");
        let pods = PodTable::default();
        let admin = AdminState::new(
            readiness,
            Arc::new(crate::metrics::Metrics::new()),
            crate::state::StateHandle::default(),
            certs.clone(),
            pods.clone(),
            None,
            String::new(),
        );
        assert_eq!(
            admin.not_ready().as_deref(),
            Some("waiting for the node agent's snapshot")
        );
        snapshot.send_replace(true);
        assert_eq!(admin.not_ready(), None, "no pods: nothing to wait for");
        let id = Identity::new("cluster.local", "default", "a");
        pods.lock().unwrap().insert(
            "uid-a".into(),
            PodSummary {
                workload: "default/a".into(),
                identity: id.to_string(),
                netns: nodetunnel_base::netns::NetnsId { dev: 1, inode: 2 },
                connections: Default::default(),
            },
        );
        assert!(admin
            .not_ready()
            .is_some_and(|why| why.starts_with("waiting for the certificate of spiffe://")));
        certs.fetch(&id).await.unwrap();
        assert_eq!(admin.not_ready(), None);
        admin.start_draining();
        assert_eq!(
            admin.not_ready().as_deref(),
            Some("shutting down: draining connections")
        );
    }
}
