//! Enrolling one pod and taking it out again: the in-pod rules, the host probe SNAT entry, the
//! tunnel (ZDS) and the pod annotation, always in that order, so that the annotation (what
//! users and Istio tooling read) is only set once traffic really is redirected, and a failed
//! enrollment from a CNI `ADD` is rolled back before the runtime retries with a new sandbox.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use nodetunnel_base::netns::NetnsHandle;
use nodetunnel_zds::agent::{NetnsSource, RequestOutcome, Serving, ZdsAgent};
use nodetunnel_zds::WorkloadInfo;

use crate::ambient::{
    BYPASS_INBOUND_ANNOTATION, DNS_CAPTURE_ANNOTATION, REDIRECTION_ANNOTATION, REDIRECTION_ENABLED,
};
use crate::node::fail_closed;
use crate::node::host_rules::{HostProbeSnat, HostRulesError};
use crate::node::inpod_rules::{self, RuleOptions, RulesError};
use crate::node::listener_handover;

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
    pub netns: Arc<NetnsHandle>,
    /// The rule options in force (re-applied when the pod's annotations change them).
    pub options: RuleOptions,
    /// The redirection annotation is set; a failed patch is retried, it never undoes the
    /// enrollment (traffic is redirected either way; the annotation only tells so).
    pub annotated: bool,
    /// Who the pod is, as sent to the tunnel (sent again when the tunnel lost the pod).
    pub info: WorkloadInfo,
}

/// What a check of an enrolled pod's in-pod rules found.
#[derive(Debug)]
pub enum RulesCheck {
    /// Exactly the rules the agent writes, with the ip rule and route.
    Intact,
    /// Something was missing or different; the rules were written again.
    Restored,
    /// Missing or different (or unreadable), and writing them failed: why, and whether the
    /// fail-closed block holds the pod's traffic in meanwhile.
    Broken(String),
}

/// Cleanup that failed for a pod already taken out of the tunnel: retried until done.
#[derive(Debug)]
struct Leftover {
    enrolled: Enrolled,
    rules: bool,
    annotation: bool,
}

/// Holds the enrolled pods (by uid) and everything needed to program them.
pub struct Enroller {
    zds: ZdsAgent,
    host: Arc<HostProbeSnat>,
    client: Client,
    dns_capture: bool,
    enrolled: BTreeMap<String, Enrolled>,
    leftovers: BTreeMap<String, Leftover>,
}

impl Enroller {
    pub fn new(zds: ZdsAgent, host: HostProbeSnat, client: Client, dns_capture: bool) -> Self {
        Enroller {
            zds,
            host: Arc::new(host),
            client,
            dns_capture,
            enrolled: BTreeMap::new(),
            leftovers: BTreeMap::new(),
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

    /// Programs the pod and hands it to the tunnel; on failure undoes what was done (a pod
    /// half enrolled would have its traffic redirected to a proxy that does not exist).
    pub async fn enroll(
        &mut self,
        pod: &Pod,
        netns: NetnsHandle,
        ips: Vec<IpAddr>,
        trigger: Trigger,
    ) -> Result<(), EnrollError> {
        let uid = pod.uid().ok_or(EnrollError::NoUid)?;
        self.leftovers.remove(&uid);
        let mut enrolled = Enrolled {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            ips,
            netns: Arc::new(netns),
            options: rule_options(pod, self.dns_capture, self.host.ipv6()),
            annotated: false,
            info: workload_info(pod),
        };
        if let Err(error) = self.program(&uid, &enrolled, trigger).await {
            tracing::warn!(%uid, %error, "enrollment failed; undoing it");
            self.undo(&uid, &enrolled, true).await;
            return Err(error);
        }
        match self
            .annotate(&enrolled.namespace, &enrolled.name, true)
            .await
        {
            Ok(()) => enrolled.annotated = true,
            Err(error) => {
                tracing::warn!(%uid, %error, "pod enrolled but not annotated; will retry")
            }
        }
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

    /// Rules, probe entries, tunnel: everything but the annotation.
    async fn program(
        &mut self,
        uid: &str,
        enrolled: &Enrolled,
        trigger: Trigger,
    ) -> Result<(), EnrollError> {
        let (netns, options) = (enrolled.netns.clone(), enrolled.options);
        tokio::task::spawn_blocking(move || inpod_rules::apply(&netns, &options)).await??;
        tracing::debug!(%uid, "in-pod rules applied");
        // Not fatal: without it an upgrade of the tunnel still works, with a small window in
        // which connections queued on the old tunnel's listeners are reset.
        let netns = enrolled.netns.clone();
        match tokio::task::spawn_blocking(move || listener_handover::enable(&netns)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%uid, %error, "listener handover not enabled"),
            Err(error) => tracing::warn!(%uid, %error, "listener handover not enabled"),
        }
        // IPv6 addresses too when the host set for them exists (`AMBIENT_IPV6`).
        let ipv6 = self.host.ipv6();
        for ip in enrolled
            .ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() || ipv6)
        {
            let (host, uid) = (self.host.clone(), uid.to_owned());
            tokio::task::spawn_blocking(move || host.add_pod(ip, &uid)).await??;
        }
        tracing::debug!(%uid, "probe SNAT entries added; handing the pod to the tunnel");
        self.send_to_tunnel(uid, enrolled, trigger).await
    }

    /// Hands the pod (a duplicate of its held netns descriptor) to the tunnel and maps the
    /// answer: without a tunnel, a watch-found pod is fine (it goes out in the next snapshot),
    /// a CNI `ADD` is not.
    async fn send_to_tunnel(
        &mut self,
        uid: &str,
        enrolled: &Enrolled,
        trigger: Trigger,
    ) -> Result<(), EnrollError> {
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
        let outcome = self
            .zds
            .add(uid, source, Some(enrolled.info.clone()))
            .await?;
        tracing::debug!(%uid, ?outcome, "tunnel answered");
        match outcome {
            RequestOutcome::Acked(ack) => match ack.error {
                None => Ok(()),
                Some(error) => Err(EnrollError::TunnelRefused(error)),
            },
            RequestOutcome::NoTunnel if trigger == Trigger::Watch => {
                tracing::info!(%uid, "no tunnel connected; the pod goes out in the next snapshot");
                Ok(())
            }
            RequestOutcome::NoTunnel => Err(EnrollError::NoTunnel {
                socket: self.zds.path().display().to_string(),
            }),
            RequestOutcome::TunnelLost(error) => Err(EnrollError::TunnelLost(error.to_string())),
        }
    }

    /// What the current tunnel serves (the reconcile pass compares it with the enrolled pods).
    pub async fn serving(&self) -> Result<Serving, EnrollError> {
        Ok(self.zds.serving().await?)
    }

    /// Sends an enrolled pod to the tunnel again (the tunnel has not acked it: it refused it
    /// before, or lost it). An error leaves the pod enrolled: its rules stay, so its traffic
    /// is redirected to ports nothing listens on and refused, never sent in plaintext.
    pub async fn resend(&mut self, uid: &str) -> Result<(), EnrollError> {
        let Some(enrolled) = self.enrolled.get(uid).cloned() else {
            return Ok(());
        };
        // `CniAdd`: here no tunnel means not served, which the caller must hear.
        self.send_to_tunnel(uid, &enrolled, Trigger::CniAdd).await
    }

    /// Compares the in-pod rules of an enrolled pod with what the agent writes
    /// (`iptables-save` inside its netns, the ip rule and route) and writes them again if they
    /// differ. Rules that cannot be read or written again get the [`fail_closed`] block, so the
    /// pod's traffic cannot leave it in plaintext meanwhile; rules found complete (again) have
    /// it lifted.
    pub async fn check_rules(&self, uid: &str) -> RulesCheck {
        let Some(enrolled) = self.enrolled.get(uid) else {
            return RulesCheck::Intact;
        };
        let (netns, options) = (enrolled.netns.clone(), enrolled.options);
        let pod = format!("{}/{}", enrolled.namespace, enrolled.name);
        let uid = uid.to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            let checked = match inpod_rules::is_applied_as(&netns, &options) {
                Ok(true) => RulesCheck::Intact,
                Ok(false) => match inpod_rules::apply(&netns, &options) {
                    Ok(()) => RulesCheck::Restored,
                    Err(error) => RulesCheck::Broken(format!("re-writing them failed: {error}")),
                },
                Err(error) => RulesCheck::Broken(format!("reading them failed: {error}")),
            };
            match checked {
                RulesCheck::Broken(why) => match fail_closed::install(&netns) {
                    Ok(()) => RulesCheck::Broken(format!(
                        "{why}; its traffic is blocked (ip rule prohibit) until they are back"
                    )),
                    Err(error) => {
                        tracing::error!(
                            %pod, %uid, %error,
                            "the fail-closed block could not be installed: the pod's traffic may leave it unencrypted"
                        );
                        RulesCheck::Broken(format!(
                            "{why}; and blocking its traffic failed too: {error}"
                        ))
                    }
                },
                done => {
                    match fail_closed::lift(&netns) {
                        Ok(true) => tracing::info!(
                            %pod, %uid, "in-pod rules back: the fail-closed block is lifted"
                        ),
                        Ok(false) => {}
                        // Still blocked: the next pass tries again; traffic stays in.
                        Err(error) => {
                            return RulesCheck::Broken(format!(
                                "the rules are back but lifting the fail-closed block failed: {error}"
                            ))
                        }
                    }
                    done
                }
            }
        })
        .await;
        checked
            .unwrap_or_else(|error| RulesCheck::Broken(format!("a blocking task failed: {error}")))
    }

    /// Re-applies the rules of an enrolled pod whose annotations now ask for other options
    /// (`ambient.istio.io/dns-capture`, `ambient.istio.io/bypass-inbound-capture`).
    pub async fn refresh(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else { return };
        let options = rule_options(pod, self.dns_capture, self.host.ipv6());
        let Some(enrolled) = self.enrolled.get_mut(&uid) else {
            return;
        };
        if enrolled.options == options {
            return;
        }
        let netns = enrolled.netns.clone();
        match tokio::task::spawn_blocking(move || inpod_rules::apply(&netns, &options)).await {
            Ok(Ok(())) => {
                tracing::info!(%uid, ?options, "in-pod rules re-applied with the pod's new options");
                enrolled.options = options;
            }
            Ok(Err(error)) => tracing::warn!(%uid, %error, "re-applying the in-pod rules"),
            Err(error) => tracing::warn!(%uid, %error, "re-applying the in-pod rules"),
        }
    }

    /// Takes the pod out: the tunnel first (so it stops proxying), then, when `pod_alive`,
    /// the rules and the annotation (a deleted pod's namespace goes away with its rules), and
    /// its probe entries. Failed cleanup is kept and retried by [`retry`](Self::retry).
    pub async fn unenroll(&mut self, uid: &str, pod_alive: bool) {
        let Some(enrolled) = self.enrolled.remove(uid) else {
            return;
        };
        tracing::info!(
            pod = %format!("{}/{}", enrolled.namespace, enrolled.name),
            %uid,
            "pod unenrolled"
        );
        self.undo(uid, &enrolled, pod_alive).await;
    }

    /// Undoes an enrollment (whole or partial).
    async fn undo(&mut self, uid: &str, enrolled: &Enrolled, pod_alive: bool) {
        match self.zds.del(uid).await {
            Ok(RequestOutcome::Acked(ack)) if ack.error.is_some() => {
                tracing::warn!(%uid, error = ?ack.error, "the tunnel answered the del with an error")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%uid, %error, "del to the tunnel"),
        }
        self.remove_probe_entries(uid, &enrolled.ips).await;
        if !pod_alive {
            return;
        }
        let leftover = Leftover {
            enrolled: enrolled.clone(),
            rules: true,
            annotation: true,
        };
        self.cleanup(uid, leftover).await;
    }

    /// Removes the rules and the annotation; whatever fails is kept for the next retry.
    async fn cleanup(&mut self, uid: &str, mut leftover: Leftover) {
        if leftover.rules {
            let netns = leftover.enrolled.netns.clone();
            match tokio::task::spawn_blocking(move || inpod_rules::remove(&netns)).await {
                Ok(Ok(())) => leftover.rules = false,
                Ok(Err(error)) => {
                    tracing::warn!(%uid, %error, "removing the in-pod rules; will retry")
                }
                Err(error) => tracing::warn!(%uid, %error, "removing the in-pod rules; will retry"),
            }
        }
        if leftover.annotation {
            let e = &leftover.enrolled;
            match self.annotate(&e.namespace, &e.name, false).await {
                Ok(()) => leftover.annotation = false,
                Err(error) => {
                    tracing::warn!(%uid, %error, "removing the redirection annotation; will retry")
                }
            }
        }
        if leftover.rules || leftover.annotation {
            self.leftovers.insert(uid.to_owned(), leftover);
        }
    }

    /// Removes `ips`' probe entries if they still belong to `uid` (a reused IP's entry may
    /// already be the new pod's).
    pub async fn remove_probe_entries(&self, uid: &str, ips: &[IpAddr]) {
        let ipv6 = self.host.ipv6();
        for ip in ips.iter().copied().filter(|ip| ip.is_ipv4() || ipv6) {
            let (host, owner) = (self.host.clone(), uid.to_owned());
            match tokio::task::spawn_blocking(move || host.remove_pod_if_owned(ip, &owner)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%uid, %ip, %error, "removing the probe SNAT entry")
                }
                Err(error) => tracing::warn!(%uid, %ip, %error, "removing the probe SNAT entry"),
            }
        }
    }

    /// Retries what failed before: annotations of enrolled pods, cleanup of removed ones.
    /// A pod that was deleted meanwhile only loses its leftovers (`alive` says which uids
    /// still exist).
    pub async fn retry(&mut self, alive: impl Fn(&str) -> bool) {
        let unannotated: Vec<(String, String, String)> = self
            .enrolled
            .iter()
            .filter(|(_, e)| !e.annotated)
            .map(|(uid, e)| (uid.clone(), e.namespace.clone(), e.name.clone()))
            .collect();
        for (uid, namespace, name) in unannotated {
            if self.annotate(&namespace, &name, true).await.is_ok() {
                if let Some(e) = self.enrolled.get_mut(&uid) {
                    e.annotated = true;
                }
            }
        }
        for (uid, leftover) in std::mem::take(&mut self.leftovers) {
            if alive(&uid) {
                self.cleanup(&uid, leftover).await;
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
            serde_json::Value::from(REDIRECTION_ENABLED)
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

/// The node-wide DNS capture setting, overridden per pod by `ambient.istio.io/dns-capture`;
/// IPv6 rules as the node-wide `AMBIENT_IPV6` says (no per-pod override, as in Istio).
fn rule_options(pod: &Pod, dns_capture: bool, ipv6: bool) -> RuleOptions {
    let annotation = |key: &str| pod.annotations().get(key).map(String::as_str);
    RuleOptions {
        dns_capture: match annotation(DNS_CAPTURE_ANNOTATION) {
            Some("true") => true,
            Some("false") => false,
            _ => dns_capture,
        },
        bypass_inbound: annotation(BYPASS_INBOUND_ANNOTATION) == Some("true"),
        ipv6,
    }
}

/// Whether the pod carries the redirection annotation (set by this agent or a previous one).
pub fn is_annotated(pod: &Pod) -> bool {
    pod.annotations()
        .get(REDIRECTION_ANNOTATION)
        .is_some_and(|v| v == REDIRECTION_ENABLED)
}
