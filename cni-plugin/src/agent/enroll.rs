//! Enrolling one pod and taking it out again: the in-pod rules, the host probe SNAT entry, the
//! tunnel (ZDS) and the pod annotation, always in that order, so that the annotation (what
//! users and Istio tooling read) is only set once traffic really is redirected, and a failed
//! enrollment from a CNI `ADD` is rolled back before the runtime retries with a new sandbox.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use nodetunnel_zds::agent::{Delivery, NetnsSource, ZdsAgent};
use nodetunnel_zds::WorkloadInfo;

use crate::ambient::{DNS_CAPTURE_ANNOTATION, REDIRECTION_ANNOTATION};
use crate::node::host_rules::{HostProbeSnat, HostRulesError};
use crate::node::inpod_rules::{self, RuleOptions, RulesError};
use crate::node::netns::PodNetns;

/// Why a pod is being enrolled: a CNI `ADD` must not succeed without a tunnel to hand the pod
/// to (fail closed: the runtime retries), while a running pod found by the watch is recorded
/// and goes out in the snapshot when the tunnel connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    CniAdd,
    Watch,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("in-pod rules: {0}")]
    Rules(#[from] RulesError),
    #[error("host probe SNAT: {0}")]
    HostRules(#[from] HostRulesError),
    #[error("no tunnel is connected to {socket}; the pod cannot be handed to it")]
    NoTunnel { socket: String },
    #[error("the tunnel refused the pod: {0}")]
    TunnelRefused(String),
    #[error("the tunnel connection failed while adding the pod: {0}")]
    TunnelLost(String),
    #[error("the ZDS agent: {0}")]
    Zds(#[from] nodetunnel_zds::agent::AgentError),
    #[error("annotating pod {pod}: {source}")]
    Annotate {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("the pod has no uid")]
    NoUid,
    #[error("duplicating the netns descriptor of {path}: {source}")]
    Descriptor {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// An enrolled pod, as the agent remembers it.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub netns: Arc<PodNetns>,
}

/// Holds the enrolled pods (by uid) and everything needed to program them.
pub struct Enroller {
    zds: ZdsAgent,
    host: Arc<HostProbeSnat>,
    client: Client,
    dns_capture: bool,
    enrolled: BTreeMap<String, Enrolled>,
}

impl Enroller {
    pub fn new(zds: ZdsAgent, host: HostProbeSnat, client: Client, dns_capture: bool) -> Self {
        Enroller {
            zds,
            host: Arc::new(host),
            client,
            dns_capture,
            enrolled: BTreeMap::new(),
        }
    }

    pub fn get(&self, uid: &str) -> Option<&Enrolled> {
        self.enrolled.get(uid)
    }

    pub fn uids(&self) -> Vec<String> {
        self.enrolled.keys().cloned().collect()
    }

    pub fn host(&self) -> &Arc<HostProbeSnat> {
        &self.host
    }

    /// Programs the pod and hands it to the tunnel; on failure undoes what was done.
    pub async fn enroll(
        &mut self,
        pod: &Pod,
        netns: PodNetns,
        ips: Vec<IpAddr>,
        trigger: Trigger,
    ) -> Result<(), EnrollError> {
        let uid = pod.uid().ok_or(EnrollError::NoUid)?;
        let enrolled = Enrolled {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            ips,
            netns: Arc::new(netns),
        };
        let result = self.program(pod, &uid, &enrolled, trigger).await;
        match result {
            Ok(()) => {
                tracing::info!(
                    pod = %format!("{}/{}", enrolled.namespace, enrolled.name),
                    %uid,
                    ips = ?enrolled.ips,
                    netns = %enrolled.netns.path().display(),
                    ?trigger,
                    "pod enrolled"
                );
                self.enrolled.insert(uid, enrolled);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%uid, %error, "enrollment failed; undoing it");
                self.undo(&uid, &enrolled, false).await;
                Err(error)
            }
        }
    }

    async fn program(
        &mut self,
        pod: &Pod,
        uid: &str,
        enrolled: &Enrolled,
        trigger: Trigger,
    ) -> Result<(), EnrollError> {
        let options = rule_options(pod, self.dns_capture);
        let netns = enrolled.netns.clone();
        tokio::task::spawn_blocking(move || inpod_rules::apply(&netns, &options)).await??;
        tracing::debug!(%uid, "in-pod rules applied");
        for ip in enrolled.ips.iter().copied().filter(IpAddr::is_ipv4) {
            let (host, uid) = (self.host.clone(), uid.to_owned());
            tokio::task::spawn_blocking(move || host.add_pod(ip, &uid)).await??;
        }
        let held = enrolled
            .netns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| EnrollError::Descriptor {
                path: enrolled.netns.path().display().to_string(),
                source,
            })?;
        let source = NetnsSource::Held {
            fd: Arc::new(held),
            described_as: enrolled.netns.path().to_owned(),
        };
        tracing::debug!(%uid, "probe SNAT entries added; handing the pod to the tunnel");
        let delivery = self.zds.add(uid, source, Some(workload_info(pod))).await?;
        tracing::debug!(%uid, ?delivery, "tunnel answered");
        match delivery {
            Delivery::Acked(ack) => {
                if let Some(error) = ack.error {
                    return Err(EnrollError::TunnelRefused(error));
                }
            }
            Delivery::NoTunnel if trigger == Trigger::Watch => {
                tracing::info!(%uid, "no tunnel connected; the pod goes out in the next snapshot");
            }
            Delivery::NoTunnel => {
                return Err(EnrollError::NoTunnel {
                    socket: self.zds.path().display().to_string(),
                })
            }
            Delivery::TunnelLost(error) => return Err(EnrollError::TunnelLost(error.to_string())),
        }
        self.annotate(&enrolled.namespace, &enrolled.name, true)
            .await
    }

    /// Takes the pod out: the tunnel first (so it stops proxying), then the rules (if the
    /// namespace is still there), the SNAT entry, and the annotation when `pod_alive`.
    pub async fn unenroll(&mut self, uid: &str, pod_alive: bool) {
        let Some(enrolled) = self.enrolled.remove(uid) else {
            return;
        };
        self.undo(uid, &enrolled, pod_alive).await;
        tracing::info!(
            pod = %format!("{}/{}", enrolled.namespace, enrolled.name),
            %uid,
            "pod unenrolled"
        );
    }

    async fn undo(&mut self, uid: &str, enrolled: &Enrolled, annotation: bool) {
        match self.zds.del(uid).await {
            Ok(Delivery::Acked(ack)) if ack.error.is_some() => {
                tracing::warn!(%uid, error = ?ack.error, "the tunnel answered the del with an error")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%uid, %error, "del to the tunnel"),
        }
        let netns = enrolled.netns.clone();
        match tokio::task::spawn_blocking(move || inpod_rules::remove(&netns)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%uid, %error, "removing the in-pod rules"),
            Err(error) => tracing::warn!(%uid, %error, "removing the in-pod rules"),
        }
        for ip in enrolled.ips.iter().copied().filter(IpAddr::is_ipv4) {
            let host = self.host.clone();
            match tokio::task::spawn_blocking(move || host.remove_pod(ip)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%uid, %ip, %error, "removing the probe SNAT entry")
                }
                Err(error) => tracing::warn!(%uid, %ip, %error, "removing the probe SNAT entry"),
            }
        }
        if annotation {
            if let Err(error) = self
                .annotate(&enrolled.namespace, &enrolled.name, false)
                .await
            {
                tracing::warn!(%uid, %error, "removing the redirection annotation");
            }
        }
    }

    /// Sets (`enabled`) or removes the redirection annotation with a JSON merge patch.
    pub async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        enabled: bool,
    ) -> Result<(), EnrollError> {
        let value = if enabled {
            serde_json::Value::from("enabled")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({
            "metadata": { "annotations": { REDIRECTION_ANNOTATION: value } }
        });
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Removing from a pod that is already gone is done.
            Err(kube::Error::Api(status)) if !enabled && status.code == 404 => Ok(()),
            Err(source) => Err(EnrollError::Annotate {
                pod: format!("{namespace}/{name}"),
                source,
            }),
        }
    }

    /// Stops the ZDS server (removing its socket).
    pub async fn shutdown(self) {
        self.zds.shutdown().await;
    }
}

/// Who the pod is, for the tunnel's certificates and policy.
fn workload_info(pod: &Pod) -> WorkloadInfo {
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    WorkloadInfo {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        service_account,
    }
}

/// The node-wide DNS capture setting, overridden per pod by `ambient.istio.io/dns-capture`.
fn rule_options(pod: &Pod, dns_capture: bool) -> RuleOptions {
    let dns_capture = match pod
        .annotations()
        .get(DNS_CAPTURE_ANNOTATION)
        .map(String::as_str)
    {
        Some("true") => true,
        Some("false") => false,
        _ => dns_capture,
    };
    RuleOptions {
        dns_capture,
        ..RuleOptions::default()
    }
}

/// Whether the pod carries the redirection annotation (set by this agent or a previous one).
pub fn is_annotated(pod: &Pod) -> bool {
    pod.annotations()
        .get(REDIRECTION_ANNOTATION)
        .is_some_and(|v| v == "enabled")
}
