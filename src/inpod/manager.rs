//! Shared mode's control loop: stay connected to the node agent, turn its ZDS requests into
//! started and drained pod proxies, and report readiness (ready only once the agent's
//! snapshot has been applied on the current connection).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::pod::{PodContext, PodProxy};
use super::snapshot::NetnsId;
use super::snapshot::{AddDecision, DelDecision, KeepDecision, SnapshotTracker};
use super::zds::{reconnect_backoff, WorkloadEvent, WorkloadInfo, ZdsClient, ZdsConnection};
use crate::drain::DrainOutcome;

/// The running pods by uid, as the admin endpoint shows them.
pub type PodTable = Arc<std::sync::Mutex<std::collections::BTreeMap<String, PodSummary>>>;

/// What `/config_dump` says about a running pod.
#[derive(Clone, Debug)]
pub struct PodSummary {
    /// `<namespace>/<name>` from the agent.
    pub workload: String,
    pub identity: String,
    /// (st_dev, st_ino) of the pod's network namespace.
    pub netns: super::snapshot::NetnsId,
    /// Live connections, read when the dump is made.
    pub connections: crate::drain::ConnectionTasks,
}

/// The error ack for an AddWorkload without `workload_info`. Without it the tunnel does not
/// know which workload the pod is, so it could only serve the pod as "any workload of this
/// node" — letting one pod send as, and receive for, its neighbours. Istio's ztunnel refuses
/// such an add the same way.
pub const MISSING_WORKLOAD_INFO: &str =
    "workload_info is required (name, namespace, service account): refusing to serve a pod \
     whose workload is unknown";

pub struct InpodManager {
    ctx: PodContext,
    /// True while the agent's snapshot has been applied on the current connection: the
    /// readiness condition this loop owns.
    snapshot_applied: watch::Sender<bool>,
    tracker: SnapshotTracker,
    pods: HashMap<String, PodProxy>,
    /// Pods being drained; each says how many connections its deadline cut.
    drains: JoinSet<DrainOutcome>,
    table: PodTable,
}

impl InpodManager {
    pub fn new(
        ctx: PodContext,
        snapshot_applied: watch::Sender<bool>,
        table: PodTable,
    ) -> InpodManager {
        InpodManager {
            ctx,
            snapshot_applied,
            tracker: SnapshotTracker::new(),
            pods: HashMap::new(),
            drains: JoinSet::new(),
            table,
        }
    }

    /// Serves until `shutdown` resolves; then stops every pod and waits for their drains
    /// (pods removed earlier and still draining included). Returns how many connections the
    /// drain deadline cut across all of them, for the exit line.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> DrainOutcome {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = reconnect_backoff();
        loop {
            let uds = self.ctx.inpod.uds.clone();
            let mut conn = tokio::select! {
                conn = ZdsClient::connect_retrying(&uds, &mut backoff) => conn,
                () = &mut shutdown => break,
            };
            tracing::info!(uds = %uds.display(), pods = self.pods.len(), "connected to the node agent");
            self.ctx.metrics.inpod.zds_connects.inc();
            self.ctx.metrics.inpod.zds_connected.set(1);
            self.tracker.connected();
            let ended = tokio::select! {
                ended = self.serve_connection(&mut conn) => ended,
                () = &mut shutdown => {
                    self.tracker.disconnected();
                    self.ctx.metrics.inpod.zds_connected.set(0);
                    break;
                }
            };
            self.tracker.disconnected();
            self.ctx.metrics.inpod.zds_connected.set(0);
            self.snapshot_applied.send_replace(false);
            match ended {
                ConnectionEnd::AfterSnapshot(reason) => {
                    tracing::warn!(%reason, pods = self.pods.len(), "node agent connection lost; keeping pods, not ready until the next snapshot");
                    backoff.reset();
                }
                ConnectionEnd::BeforeSnapshot(reason) => {
                    // An agent that accepts and hangs up at once must not make us spin.
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, ?delay, "node agent connection lost before its snapshot");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => break,
                    }
                }
            }
        }
        self.snapshot_applied.send_replace(false);
        self.stop_all().await
    }

    /// Handles requests until the connection ends; says why it ended.
    async fn serve_connection(&mut self, conn: &mut ZdsConnection) -> ConnectionEnd {
        let reason = loop {
            let event = match conn.next().await {
                Ok(Some(event)) => event,
                Ok(None) => break "the agent closed the connection".to_owned(),
                Err(e) => break e.to_string(),
            };
            let error = self.handle(event).await;
            if let Some(error) = &error {
                tracing::warn!(%error, "node agent request refused");
            }
            if let Err(e) = conn.ack(error).await {
                break e.to_string();
            }
            // Reap finished drains so the set does not grow.
            while self.drains.try_join_next().is_some() {}
        };
        if self.tracker.is_ready() {
            ConnectionEnd::AfterSnapshot(reason)
        } else {
            ConnectionEnd::BeforeSnapshot(reason)
        }
    }

    /// Applies one request; `Some(reason)` is the error to ack with.
    async fn handle(&mut self, event: WorkloadEvent) -> Option<String> {
        match event {
            WorkloadEvent::Add { uid, info, netns } => {
                // Refused before the snapshot notes the uid, as ztunnel does: a pod this names
                // that was running is drained at SnapshotSent rather than kept unidentified.
                let Some(info) = info else {
                    return Some(format!("add {uid}: {MISSING_WORKLOAD_INFO}"));
                };
                let id = match NetnsId::of_fd(&netns) {
                    Ok(id) => id,
                    Err(e) => return Some(format!("add {uid}: cannot stat the netns fd: {e}")),
                };
                match self.tracker.add(&uid, id) {
                    AddDecision::Unchanged => {
                        tracing::debug!(%uid, "add for a running pod in the same netns: nothing to do");
                        None
                    }
                    AddDecision::Start => self.start(&uid, &info, netns).await,
                    AddDecision::Replace { old } => {
                        tracing::info!(%uid, ?old, new = ?id, "pod netns changed: replacing its proxy");
                        self.stop(&uid).await;
                        self.start(&uid, &info, netns).await
                    }
                }
            }
            WorkloadEvent::Keep { uid } => match self.tracker.keep(&uid) {
                Ok(KeepDecision::Kept) => None,
                Ok(KeepDecision::Unknown) => {
                    tracing::debug!(%uid, "keep for a pod without a proxy: nothing to keep");
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            WorkloadEvent::Del { uid } => {
                match self.tracker.del(&uid) {
                    DelDecision::Stop => self.stop(&uid).await,
                    DelDecision::Unknown => tracing::debug!(%uid, "del for an unknown pod"),
                }
                None
            }
            WorkloadEvent::SnapshotSent => match self.tracker.snapshot_sent() {
                Ok(stale) => {
                    for uid in &stale {
                        tracing::info!(%uid, "pod not in the agent's snapshot: draining");
                        self.stop(uid).await;
                    }
                    tracing::info!(
                        pods = self.pods.len(),
                        drained = stale.len(),
                        "snapshot applied: ready"
                    );
                    self.snapshot_applied.send_replace(true);
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            WorkloadEvent::Invalid(violation) => Some(violation.to_string()),
        }
    }

    async fn start(
        &mut self,
        uid: &str,
        info: &WorkloadInfo,
        netns: std::os::fd::OwnedFd,
    ) -> Option<String> {
        match PodProxy::start(&self.ctx, uid, info, netns).await {
            Ok(pod) => {
                let summary = PodSummary {
                    workload: format!("{}/{}", info.namespace, info.name),
                    identity: pod.identity().to_string(),
                    netns: pod.netns_id(),
                    connections: pod.connection_tasks(),
                };
                tracing::info!(%uid, workload = %summary.workload, identity = %summary.identity, "pod proxy started");
                self.table_mut().insert(uid.to_owned(), summary);
                self.pods.insert(uid.to_owned(), pod);
                self.ctx.metrics.inpod.proxies_started.inc();
                None
            }
            Err(e) => {
                self.tracker.forget(uid);
                Some(format!("add {uid}: {e}"))
            }
        }
    }

    /// Closes a pod's listeners now and drains its connections in the background.
    async fn stop(&mut self, uid: &str) {
        let Some(mut pod) = self.pods.remove(uid) else {
            return;
        };
        self.table_mut().remove(uid);
        self.ctx.metrics.inpod.proxies_stopped.inc();
        // A certificate is forgotten (no longer renewed) once no running pod uses it.
        let identity = pod.identity();
        if !self.pods.values().any(|p| p.identity() == identity) {
            self.ctx.certs.forget(identity);
        }
        pod.stop_listening().await;
        let live = pod.connections();
        tracing::info!(%uid, connections = live, deadline = ?self.ctx.config.drain_timeout, "pod removed: listeners closed, draining");
        self.drains.spawn(pod.drain(self.ctx.config.drain_timeout));
    }

    fn table_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, PodSummary>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every pod's listeners first, then waits for all drains. Listeners go before any
    /// waiting so that, during an upgrade, the kernel hands every new connection to the newer
    /// tunnel at once (SO_REUSEPORT) while the old one finishes what it has.
    async fn stop_all(&mut self) -> DrainOutcome {
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in &uids {
            self.tracker.forget(uid);
            self.stop(uid).await;
        }
        let mut cut = 0;
        while let Some(drained) = self.drains.join_next().await {
            cut += drained.map_or(0, |outcome| outcome.cut);
        }
        DrainOutcome { cut }
    }
}

enum ConnectionEnd {
    /// The connection had delivered a snapshot: it was healthy, reconnect at once.
    AfterSnapshot(String),
    /// It ended before a snapshot: back off before the next attempt.
    BeforeSnapshot(String),
}

#[cfg(test)]
mod tests;
