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
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use nodetunnel_base::backoff::Backoff;
use nodetunnel_base::netns::NetnsHandle;

use super::add_checks;
use tokio::sync::{mpsc, oneshot, watch};

use super::enroll::{is_annotated, Enroller, Trigger};
use super::host_mounts::HostMounts;
use super::metrics::{Metrics, ReconcileEvent};
use crate::ambient::{Decision, EnrollmentRules, SkipReason};
use crate::event::PluginEvent;
use crate::node::procscan::ProcIndex;

mod protect;

/// Inputs of the reconciler.
#[derive(Debug)]
pub enum Input {
    /// Boxed, as pods: Kubernetes objects are large and the channel holds up to 256 inputs.
    Namespaces(Box<watcher::Event<Namespace>>),
    Pods(Box<watcher::Event<Pod>>),
    CniAdd(PluginEvent, oneshot::Sender<CniAddOutcome>),
    /// Try again what could not be done yet (pods to enroll, annotations, cleanup).
    Retry,
    /// Check every enrolled pod is protected, repair what is not (`protect`).
    Protect,
    /// Shutdown: return the enroller (connections of the event server may still hold senders).
    Stop,
}

/// The answer to a plugin `ADD`, mapped to HTTP by the event server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniAddOutcome {
    /// 200: this ADD enrolled the pod.
    Enrolled { uid: String, message: String },
    /// 200: nothing to do (not ambient, already enrolled; the text says which).
    Done(String),
    /// 400: the event itself is wrong.
    BadEvent(String),
    /// 500: the pod should be enrolled and could not be.
    Failed(String),
}

/// `namespace/name`.
type PodKey = String;

/// First retry of a pod that could not be enrolled; doubles per failure up to [`RETRY_MAX`],
/// exactly (each pod has its own schedule, so there is no crowd to spread out).
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long one `/proc` index serves lookups.
const PROC_INDEX_TTL: Duration = Duration::from_secs(1);

/// Where this node's things are.
pub struct ThisNode {
    /// `NODE_NAME`: a CNI ADD for a pod scheduled elsewhere is refused.
    pub name: String,
    /// The host's /proc (running pods' netns, the host's netns).
    pub proc_root: PathBuf,
    /// Plugin-reported netns paths are host paths, opened under this mount.
    pub host: HostMounts,
}

pub struct Reconciler {
    rules: EnrollmentRules,
    client: Client,
    node: ThisNode,
    enroller: Enroller,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<PodKey, Pod>,
    /// Listing buffers between a watcher's `Init` and `InitDone`.
    ns_init: Option<BTreeMap<String, Namespace>>,
    pod_init: Option<BTreeMap<PodKey, Pod>>,
    ns_synced: bool,
    pods_synced: bool,
    /// Pods to enroll that could not be yet (netns not found, a step failed): when to try
    /// next and its backoff.
    retry: BTreeMap<PodKey, (Instant, Backoff)>,
    /// The uids enrolled when a pod relist began: only those may be found gone at its end
    /// (a pod enrolled by a CNI ADD during the relist is not in it).
    enrolled_at_init: Option<BTreeSet<String>>,
    /// The last `/proc` index and when it was taken.
    proc_index: Option<(Instant, Arc<ProcIndex>)>,
    /// Set once the first full listing has been reconciled (readiness, and the ZDS gate).
    synced: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// Enrolled pods the protection pass found unprotected, and why.
    unprotected: protect::Unprotected,
}

impl Reconciler {
    pub fn new(
        rules: EnrollmentRules,
        client: Client,
        node: ThisNode,
        enroller: Enroller,
        synced: watch::Sender<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reconciler {
            rules,
            client,
            node,
            enroller,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            ns_init: None,
            pod_init: None,
            ns_synced: false,
            pods_synced: false,
            retry: BTreeMap::new(),
            enrolled_at_init: None,
            proc_index: None,
            synced,
            metrics,
            unprotected: protect::Unprotected::new(),
        }
    }

    /// Handles inputs until the channel closes; returns the enroller for shutdown.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) -> Enroller {
        while let Some(input) = inputs.recv().await {
            if matches!(input, Input::Stop) {
                break;
            }
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
                if let (true, CniAddOutcome::Enrolled { uid, .. }) = (reply.is_closed(), &outcome) {
                    // The plugin gave up (its deadline passed, or it was killed): the runtime
                    // takes the ADD as failed and tears this sandbox down, so the pod must not
                    // stay enrolled in it.
                    tracing::warn!(%uid, "the plugin stopped waiting; undoing the enrollment");
                    self.enroller.unenroll(uid, true).await;
                }
                let _ = reply.send(outcome);
            }
            Input::Retry => self.retry_due().await,
            Input::Protect => self.protect_all().await,
            Input::Stop => {}
        }
    }

    /// Evaluates the pods whose retry time has come, then retries the enroller's own
    /// pending work (annotations, cleanup).
    async fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PodKey> = self
            .retry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.evaluate(&key).await;
        }
        let alive: BTreeSet<String> = self
            .pods
            .values()
            .filter(|p| !matches!(self.decide(p), Decision::Skip(SkipReason::Terminated(_))))
            .filter_map(|p| p.uid())
            .collect();
        self.enroller.retry(|uid| alive.contains(uid)).await;
    }

    /// Schedules another attempt for `key`, backing off from [`RETRY_FIRST`] to
    /// [`RETRY_MAX`]; only the first failure is logged at info.
    fn retry_later(&mut self, key: &str, why: &str) {
        if self.retry.contains_key(key) {
            tracing::debug!(pod = key, "{why}; will retry");
        } else {
            tracing::info!(pod = key, "{why}; will retry");
        }
        let (at, backoff) = self
            .retry
            .entry(key.to_owned())
            .or_insert_with(|| (Instant::now(), Backoff::exact(RETRY_FIRST, RETRY_MAX)));
        *at = Instant::now() + backoff.next_delay();
    }

    fn ready(&self) -> bool {
        self.ns_synced && self.pods_synced
    }

    /// Counts a pod or namespace seen by a watch as Istio's queue names it: an update when
    /// the object was `known` already, an add otherwise.
    fn count(&self, known: bool) {
        self.metrics.on_reconcile_event(if known {
            ReconcileEvent::Update
        } else {
            ReconcileEvent::Add
        });
    }

    async fn namespace_event(&mut self, event: watcher::Event<Namespace>) {
        let changed: Vec<String> = match event {
            watcher::Event::Init => {
                self.ns_init = Some(BTreeMap::new());
                vec![]
            }
            watcher::Event::InitApply(ns) => {
                self.count(self.namespaces.contains_key(&ns.name_any()));
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
                self.count(self.namespaces.contains_key(&name));
                self.namespaces.insert(name.clone(), ns);
                self.keys_in(&name)
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                self.metrics.on_reconcile_event(ReconcileEvent::Delete);
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
                self.enrolled_at_init = Some(self.enroller.uids().into_iter().collect());
                vec![]
            }
            watcher::Event::InitApply(pod) => {
                self.count(self.pods.contains_key(&key_of(&pod)));
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
                // Pods enrolled before the relist began and missing from it were deleted
                // meanwhile (one enrolled by a CNI ADD during the relist may be missing too,
                // but is not gone).
                let listed: BTreeSet<String> = self.pods.values().filter_map(|p| p.uid()).collect();
                for uid in self.enrolled_at_init.take().unwrap_or_default() {
                    if !listed.contains(&uid) {
                        self.enroller.unenroll(&uid, false).await;
                    }
                }
                self.pods.keys().cloned().collect()
            }
            watcher::Event::Apply(pod) => {
                let key = key_of(&pod);
                self.count(self.pods.contains_key(&key));
                self.pods.insert(key.clone(), pod);
                vec![key]
            }
            watcher::Event::Delete(pod) => {
                let key = key_of(&pod);
                self.metrics.on_reconcile_event(ReconcileEvent::Delete);
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
        let first_sync = !*self.synced.borrow();
        for key in keys {
            self.evaluate(&key).await;
        }
        if first_sync {
            self.remove_stale_probe_entries().await;
            self.synced.send_replace(true);
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
            self.retry.remove(key);
            return;
        };
        let Some(uid) = pod.uid() else { return };
        let decision = self.decide(&pod);
        let enrolled = self.enroller.get(&uid).is_some();
        let finished = matches!(decision, Decision::Skip(SkipReason::Terminated(_)));
        match (decision, enrolled) {
            (Decision::Enroll, true) => {
                self.enroller.refresh(&pod).await;
                self.protect_one(&uid).await;
            }
            (Decision::Enroll, false) => self.enroll_running(key, &uid).await,
            (Decision::Skip(reason), true) => {
                tracing::info!(pod = key, %reason, "pod leaves the mesh");
                self.retry.remove(key);
                self.enroller.unenroll(&uid, !finished).await;
            }
            (Decision::Skip(reason), false) if is_annotated(&pod) && !finished => {
                // Enrolled by an earlier agent, and left the mesh while none was running.
                tracing::info!(pod = key, %reason, "cleaning up a pod enrolled before this agent started");
                self.retry.remove(key);
                self.cleanup_orphan(&pod, &uid).await;
            }
            _ => {
                self.retry.remove(key);
            }
        }
    }

    /// Enrolls a running pod the watch says belongs in the mesh. The decision is made again
    /// on the pod as the API server has it now: the pod and namespace watches are separate
    /// streams, and a pod's opt-out may not have arrived yet when its namespace's label did.
    async fn enroll_running(&mut self, key: &str, uid: &str) {
        let Some(cached) = self.pods.get(key).cloned() else {
            return;
        };
        if pod_ips(&cached).is_empty() {
            // Still being created: the plugin's ADD brings its netns.
            return;
        }
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &cached.namespace().unwrap_or_default());
        let pod = match pods.get_opt(&cached.name_any()).await {
            Ok(Some(pod)) if pod.uid().as_deref() == Some(uid) => pod,
            // Deleted (or replaced by a pod of the same name) meanwhile: its events follow.
            Ok(_) => return,
            Err(error) => {
                self.retry_later(key, &format!("getting the pod: {error}"));
                return;
            }
        };
        self.remember_pod(&pod);
        if let Decision::Skip(reason) = self.decide(&pod) {
            tracing::debug!(pod = key, %reason, "not enrolled after all (fresh from the API)");
            self.retry.remove(key);
            return;
        }
        let ips = pod_ips(&pod);
        let Some(netns) = self.find_netns(uid, &ips).await else {
            self.retry_later(key, "netns of the running pod not found yet");
            return;
        };
        match self.enroller.enroll(&pod, netns, ips, Trigger::Watch).await {
            Ok(()) => {
                self.retry.remove(key);
            }
            Err(error) => {
                self.retry_later(key, &format!("enrolling the running pod failed: {error}"))
            }
        }
    }

    /// Keeps `pod` in the cache if it is newer than what the watch delivered so far
    /// (resource versions compared as numbers, as the API server issues them).
    fn remember_pod(&mut self, pod: &Pod) {
        let key = key_of(pod);
        if is_newer(
            pod.resource_version(),
            self.pods.get(&key).and_then(|p| p.resource_version()),
        ) {
            self.pods.insert(key, pod.clone());
        }
    }

    fn remember_namespace(&mut self, namespace: &Namespace) {
        let name = namespace.name_any();
        let cached = self
            .namespaces
            .get(&name)
            .and_then(|n| n.resource_version());
        if is_newer(namespace.resource_version(), cached) {
            self.namespaces.insert(name, namespace.clone());
        }
    }

    fn decide(&self, pod: &Pod) -> Decision {
        let namespace = pod.namespace().and_then(|ns| self.namespaces.get(&ns));
        self.rules.decide(pod, namespace)
    }

    /// The running pod's netns, from a `/proc` index at most [`PROC_INDEX_TTL`] old, so the
    /// many pods of a first sync or a retry round cost one scan. `None` when not found (not
    /// running yet, or its IPs are not inside): the caller retries later with a new index.
    async fn find_netns(&mut self, uid: &str, ips: &[IpAddr]) -> Option<NetnsHandle> {
        if ips.is_empty() {
            return None;
        }
        let index = match &self.proc_index {
            Some((at, index)) if at.elapsed() < PROC_INDEX_TTL => index.clone(),
            _ => {
                let root = self.node.proc_root.clone();
                match tokio::task::spawn_blocking(move || ProcIndex::scan(&root)).await {
                    Ok(Ok(index)) => {
                        let index = Arc::new(index);
                        self.proc_index = Some((Instant::now(), index.clone()));
                        index
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%uid, %error, "scanning for the pod's netns");
                        return None;
                    }
                    Err(error) => {
                        tracing::warn!(%uid, %error, "scanning for the pod's netns");
                        return None;
                    }
                }
            }
        };
        let (uid, ips) = (uid.to_owned(), ips.to_vec());
        tokio::task::spawn_blocking(move || index.find(&uid, &ips))
            .await
            .ok()
            .flatten()
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
        self.enroller.remove_probe_entries(uid, &ips).await;
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
                self.enroller.remove_probe_entries(&uid, &[ip]).await;
            }
        }
    }

    /// A pod sandbox being created: enroll it if it is ambient, with the netns the runtime
    /// gave the plugin.
    async fn cni_add(&mut self, event: PluginEvent) -> CniAddOutcome {
        let who = format!("{}/{}", event.pod_namespace, event.pod_name);
        if !*self.synced.borrow() {
            // Its decision would rest on half a picture, and no tunnel is served yet.
            return CniAddOutcome::Failed(format!(
                "pod {who}: the agent has not finished its first sync with the Kubernetes API yet"
            ));
        }
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
        self.remember_pod(&pod);
        if let Some(namespace) = &namespace {
            self.remember_namespace(namespace);
        }
        if let Decision::Skip(reason) = self.rules.decide(&pod, namespace.as_ref()) {
            return CniAddOutcome::Done(format!("pod {who} not enrolled: {reason}"));
        }
        let Some(uid) = pod.uid() else {
            return CniAddOutcome::Failed(format!("pod {who} has no uid"));
        };
        let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if let Err(refused) = add_checks::on_this_node(scheduled, &self.node.name) {
            return CniAddOutcome::BadEvent(format!("pod {who}: {refused}"));
        }
        let path = match self.node.host.resolve(&event.netns) {
            Ok(path) => path,
            Err(error) => return CniAddOutcome::BadEvent(format!("pod {who}: {error}")),
        };
        let netns = match tokio::task::spawn_blocking(move || NetnsHandle::open(&path)).await {
            Ok(Ok(netns)) => netns,
            Ok(Err(error)) => return CniAddOutcome::BadEvent(format!("pod {who}: {error}")),
            Err(error) => return CniAddOutcome::Failed(format!("pod {who}: {error}")),
        };
        let (proc_root, reported) = (self.node.proc_root.clone(), ips.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let result = add_checks::check_netns(&netns, &proc_root, &reported);
            (netns, result)
        })
        .await;
        let netns = match checked {
            Ok((netns, Ok(()))) => netns,
            Ok((_, Err(refused))) => {
                return CniAddOutcome::BadEvent(format!("pod {who}: {refused}"))
            }
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
                CniAddOutcome::Enrolled {
                    uid,
                    message: format!("pod {who} enrolled"),
                }
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

/// Whether `candidate` is a newer resource version than `cached` (none cached: yes). Versions
/// that are not numbers are taken as newer: the fresh read wins.
fn is_newer(candidate: Option<String>, cached: Option<String>) -> bool {
    match (
        candidate.and_then(|v| v.parse::<u64>().ok()),
        cached.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(new), Some(old)) => new > old,
        _ => true,
    }
}
