//! The one task that decides which pods are enrolled. Every input (namespace and pod watch
//! events, plugin `ADD` events, retry ticks) arrives on one channel and is handled to the end
//! before the next, so an enrollment never races an unenrollment of the same pod.
//!
//! Desired state: a pod is enrolled when [`EnrollmentRules`] say so, it runs on this node, is
//! not finished, and has an IP. A pod that is still being created (no IP yet) is left to the
//! plugin's `ADD`, which carries its netns; a running pod's netns is found under `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};

use super::enroll::{is_annotated, Enroller, Trigger};
use crate::ambient::{Decision, EnrollmentRules};
use crate::event::PluginEvent;
use crate::node::netns::PodNetns;
use crate::node::procscan;

/// Inputs of the reconciler.
#[derive(Debug)]
pub enum Input {
    /// Boxed, as pods: Kubernetes objects are large and the channel holds up to 256 inputs.
    Namespaces(Box<watcher::Event<Namespace>>),
    Pods(Box<watcher::Event<Pod>>),
    CniAdd(PluginEvent, oneshot::Sender<CniAddOutcome>),
    /// Try again the pods whose enrollment could not be done yet.
    Retry,
}

/// The answer to a plugin `ADD`, mapped to HTTP by the event server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniAddOutcome {
    /// 200: enrolled, or nothing to do (the text says which).
    Done(String),
    /// 400: the event itself is wrong.
    BadEvent(String),
    /// 500: the pod should be enrolled and could not be.
    Failed(String),
}

/// `namespace/name`.
type PodKey = String;

pub struct Reconciler {
    rules: EnrollmentRules,
    client: Client,
    proc_root: PathBuf,
    enroller: Enroller,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<PodKey, Pod>,
    /// Listing buffers between a watcher's `Init` and `InitDone`.
    ns_init: Option<BTreeMap<String, Namespace>>,
    pod_init: Option<BTreeMap<PodKey, Pod>>,
    ns_synced: bool,
    pods_synced: bool,
    /// Pods to enroll whose netns was not found yet.
    retry: BTreeSet<PodKey>,
    synced: Arc<AtomicBool>,
    /// Fired once, after the first full listing has been reconciled.
    on_synced: Option<oneshot::Sender<()>>,
}

impl Reconciler {
    pub fn new(
        rules: EnrollmentRules,
        client: Client,
        proc_root: PathBuf,
        enroller: Enroller,
        synced: Arc<AtomicBool>,
        on_synced: oneshot::Sender<()>,
    ) -> Self {
        Reconciler {
            rules,
            client,
            proc_root,
            enroller,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            ns_init: None,
            pod_init: None,
            ns_synced: false,
            pods_synced: false,
            retry: BTreeSet::new(),
            synced,
            on_synced: Some(on_synced),
        }
    }

    /// Handles inputs until the channel closes; returns the enroller for shutdown.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) -> Enroller {
        while let Some(input) = inputs.recv().await {
            self.handle(input).await;
        }
        self.enroller
    }

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Namespaces(event) => self.namespace_event(*event).await,
            Input::Pods(event) => self.pod_event(*event).await,
            Input::CniAdd(event, reply) => {
                let outcome = self.cni_add(event).await;
                let _ = reply.send(outcome);
            }
            Input::Retry => {
                for key in std::mem::take(&mut self.retry) {
                    self.evaluate(&key).await;
                }
            }
        }
    }

    fn ready(&self) -> bool {
        self.ns_synced && self.pods_synced
    }

    async fn namespace_event(&mut self, event: watcher::Event<Namespace>) {
        let changed: Vec<String> = match event {
            watcher::Event::Init => {
                self.ns_init = Some(BTreeMap::new());
                vec![]
            }
            watcher::Event::InitApply(ns) => {
                if let Some(init) = self.ns_init.as_mut() {
                    init.insert(ns.name_any(), ns);
                }
                vec![]
            }
            watcher::Event::InitDone => {
                if let Some(init) = self.ns_init.take() {
                    self.namespaces = init;
                }
                self.ns_synced = true;
                self.pods.keys().cloned().collect()
            }
            watcher::Event::Apply(ns) => {
                let name = ns.name_any();
                self.namespaces.insert(name.clone(), ns);
                self.keys_in(&name)
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                self.namespaces.remove(&name);
                self.keys_in(&name)
            }
        };
        self.after_change(changed).await;
    }

    async fn pod_event(&mut self, event: watcher::Event<Pod>) {
        let changed: Vec<PodKey> = match event {
            watcher::Event::Init => {
                self.pod_init = Some(BTreeMap::new());
                vec![]
            }
            watcher::Event::InitApply(pod) => {
                if let Some(init) = self.pod_init.as_mut() {
                    init.insert(key_of(&pod), pod);
                }
                vec![]
            }
            watcher::Event::InitDone => {
                if let Some(init) = self.pod_init.take() {
                    self.pods = init;
                }
                self.pods_synced = true;
                // Pods enrolled before that are gone from the listing were deleted meanwhile.
                let listed: BTreeSet<String> = self.pods.values().filter_map(|p| p.uid()).collect();
                for uid in self.enroller.uids() {
                    if !listed.contains(&uid) {
                        self.enroller.unenroll(&uid, false).await;
                    }
                }
                self.pods.keys().cloned().collect()
            }
            watcher::Event::Apply(pod) => {
                let key = key_of(&pod);
                self.pods.insert(key.clone(), pod);
                vec![key]
            }
            watcher::Event::Delete(pod) => {
                let key = key_of(&pod);
                self.pods.remove(&key);
                self.retry.remove(&key);
                if let Some(uid) = pod.uid() {
                    self.enroller.unenroll(&uid, false).await;
                }
                vec![]
            }
        };
        self.after_change(changed).await;
    }

    async fn after_change(&mut self, keys: Vec<PodKey>) {
        if !self.ready() {
            return;
        }
        let first_sync = !self.synced.load(Ordering::Relaxed);
        for key in keys {
            self.evaluate(&key).await;
        }
        if first_sync {
            self.remove_stale_probe_entries().await;
            self.synced.store(true, Ordering::Relaxed);
            if let Some(on_synced) = self.on_synced.take() {
                let _ = on_synced.send(());
            }
            tracing::info!(
                pods = self.pods.len(),
                enrolled = self.enroller.uids().len(),
                "initial sync done"
            );
        }
    }

    fn keys_in(&self, namespace: &str) -> Vec<PodKey> {
        let prefix = format!("{namespace}/");
        self.pods
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Brings one pod to its desired state.
    async fn evaluate(&mut self, key: &str) {
        let Some(pod) = self.pods.get(key).cloned() else {
            return;
        };
        let Some(uid) = pod.uid() else { return };
        let decision = self.decide(&pod);
        let enrolled = self.enroller.get(&uid).is_some();
        match (decision, enrolled) {
            (Decision::Enroll, false) => {
                let ips = pod_ips(&pod);
                if ips.is_empty() {
                    // Still being created: the plugin's ADD brings its netns.
                    return;
                }
                match self.find_netns(&uid, &ips).await {
                    Some(netns) => {
                        if let Err(error) =
                            self.enroller.enroll(&pod, netns, ips, Trigger::Watch).await
                        {
                            tracing::warn!(pod = key, %error, "enrolling a running pod failed; will retry");
                            self.retry.insert(key.to_owned());
                        }
                    }
                    None => {
                        tracing::info!(
                            pod = key,
                            "netns of the running pod not found yet; will retry"
                        );
                        self.retry.insert(key.to_owned());
                    }
                }
            }
            (Decision::Skip(reason), true) => {
                tracing::info!(pod = key, %reason, "pod leaves the mesh");
                self.retry.remove(key);
                self.enroller.unenroll(&uid, !is_finished(&pod)).await;
            }
            (Decision::Skip(reason), false) if is_annotated(&pod) && !is_finished(&pod) => {
                // Enrolled by an earlier agent, and left the mesh while none was running.
                tracing::info!(pod = key, %reason, "cleaning up a pod enrolled before this agent started");
                self.cleanup_orphan(&pod, &uid).await;
            }
            _ => {}
        }
    }

    fn decide(&self, pod: &Pod) -> Decision {
        let namespace = pod.namespace().and_then(|ns| self.namespaces.get(&ns));
        self.rules.decide(pod, namespace)
    }

    async fn find_netns(&self, uid: &str, ips: &[IpAddr]) -> Option<PodNetns> {
        let (root, uid_owned, ips_owned) = (self.proc_root.clone(), uid.to_owned(), ips.to_vec());
        let found = tokio::task::spawn_blocking(move || {
            procscan::find_pod_netns(&root, &uid_owned, &ips_owned)
        })
        .await;
        match found {
            Ok(Ok(netns)) => netns,
            Ok(Err(error)) => {
                tracing::warn!(%uid, %error, "scanning for the pod's netns");
                None
            }
            Err(error) => {
                tracing::warn!(%uid, %error, "scanning for the pod's netns");
                None
            }
        }
    }

    /// Rules, probe entry and annotation left by an earlier agent for a pod that is no
    /// longer in the mesh.
    async fn cleanup_orphan(&mut self, pod: &Pod, uid: &str) {
        let ips = pod_ips(pod);
        if let Some(netns) = self.find_netns(uid, &ips).await {
            let removed =
                tokio::task::spawn_blocking(move || crate::node::inpod_rules::remove(&netns)).await;
            if let Ok(Err(error)) = removed {
                tracing::warn!(%uid, %error, "removing the in-pod rules");
            }
        }
        for ip in ips.into_iter().filter(IpAddr::is_ipv4) {
            let host = self.enroller.host().clone();
            let _ = tokio::task::spawn_blocking(move || host.remove_pod(ip)).await;
        }
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        if let Err(error) = self.enroller.annotate(&ns, &name, false).await {
            tracing::warn!(%uid, %error, "removing the redirection annotation");
        }
    }

    /// Probe SNAT entries whose pod is not enrolled (left by an earlier agent).
    async fn remove_stale_probe_entries(&mut self) {
        let host = self.enroller.host().clone();
        let entries = match tokio::task::spawn_blocking(move || host.entries()).await {
            Ok(Ok(entries)) => entries,
            Ok(Err(error)) => {
                tracing::warn!(%error, "listing the probe SNAT entries");
                return;
            }
            Err(_) => return,
        };
        for (ip, uid) in entries {
            if self.enroller.get(&uid).is_none() {
                tracing::info!(%ip, %uid, "removing a stale probe SNAT entry");
                let host = self.enroller.host().clone();
                let _ = tokio::task::spawn_blocking(move || host.remove_pod(ip)).await;
            }
        }
    }

    /// A pod sandbox being created: enroll it if it is ambient, with the netns the runtime
    /// gave the plugin.
    async fn cni_add(&mut self, event: PluginEvent) -> CniAddOutcome {
        let who = format!("{}/{}", event.pod_namespace, event.pod_name);
        if event.pod_name.is_empty() || event.pod_namespace.is_empty() || event.netns.is_empty() {
            return CniAddOutcome::BadEvent(format!(
                "event for {who:?}: PodName, PodNamespace and Netns are required"
            ));
        }
        let ips = match event.addresses() {
            Ok(ips) => ips,
            Err(error) => return CniAddOutcome::BadEvent(format!("pod {who}: {error}")),
        };
        // The API server, not the watch cache, which may not have seen the pod yet.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &event.pod_namespace);
        let pod = match pods.get(&event.pod_name).await {
            Ok(pod) => pod,
            Err(error) => return CniAddOutcome::Failed(format!("getting pod {who}: {error}")),
        };
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = match namespaces.get_opt(&event.pod_namespace).await {
            Ok(ns) => ns,
            Err(error) => {
                return CniAddOutcome::Failed(format!(
                    "getting namespace {}: {error}",
                    event.pod_namespace
                ))
            }
        };
        if let Decision::Skip(reason) = self.rules.decide(&pod, namespace.as_ref()) {
            return CniAddOutcome::Done(format!("pod {who} not enrolled: {reason}"));
        }
        let Some(uid) = pod.uid() else {
            return CniAddOutcome::Failed(format!("pod {who} has no uid"));
        };
        let path = PathBuf::from(&event.netns);
        let netns = match tokio::task::spawn_blocking(move || PodNetns::open(&path)).await {
            Ok(Ok(netns)) => netns,
            Ok(Err(error)) => return CniAddOutcome::BadEvent(format!("pod {who}: {error}")),
            Err(error) => return CniAddOutcome::Failed(format!("pod {who}: {error}")),
        };
        if let Some(existing) = self.enroller.get(&uid) {
            if existing.netns.id() == netns.id() {
                return CniAddOutcome::Done(format!("pod {who} already enrolled"));
            }
            // A new sandbox for the same pod: the old one's rules and proxy go.
            self.enroller.unenroll(&uid, false).await;
        }
        match self
            .enroller
            .enroll(&pod, netns, ips, Trigger::CniAdd)
            .await
        {
            Ok(()) => {
                self.retry.remove(&key_of(&pod));
                CniAddOutcome::Done(format!("pod {who} enrolled"))
            }
            Err(error) => CniAddOutcome::Failed(format!("enrolling pod {who}: {error}")),
        }
    }
}

fn key_of(pod: &Pod) -> PodKey {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// `status.podIPs` (falling back to `status.podIP`), parsed; unparsable entries are skipped.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return vec![];
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

/// Succeeded or Failed: the pod's containers are done and its sandbox is going away.
fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}
