//! The protection pass: every enrolled pod is checked against what enrollment set up, and
//! repaired, or reported unprotected where it cannot be. It runs every `RECONCILE_INTERVAL`,
//! when a tunnel connects or goes away, and for a pod when its watch event arrives.
//!
//! Per pod, in this order:
//! 1. **The netns is still the pod's**: the `/proc` scan finds the pod's processes (by the
//!    `pod<uid>` cgroup) in a netns holding its IP. If that is another netns than the one
//!    enrolled, the sandbox was replaced: the old netns is dropped from the tunnel and the new
//!    one enrolled. (No process found: the pod is being torn down or recreated; the CNI `ADD`
//!    of a new sandbox takes over.)
//! 2. **The in-pod rules are complete**: `iptables-save` inside the netns (and the ip rule and
//!    route) must be exactly what the agent writes; otherwise they are written again.
//! 3. **The tunnel serves it**: a tunnel is connected and has acked the pod; a connected
//!    tunnel that has not is sent the pod again.
//!
//! Fail closed: what cannot be repaired never leaves the pod's traffic unencrypted. The rules
//! are never removed for a failure; rules that are gone and cannot be written again (or cannot
//! be read) get the netlink-only block of [`fail_closed`](crate::node::fail_closed) (`ip rule
//! … prohibit` for everything but the tunnel's marked sockets and local traffic), lifted once
//! a pass finds the rules complete again. With no tunnel (or a tunnel that refused the pod),
//! the rules redirect the pod's TCP to 15001/15006 in its netns, where nothing listens, so
//! connections are refused. Such a pod counts in `nodetunnel_cni_unprotected_pods` and gets a
//! warning naming it and why, once per change of reason.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::Reconciler;
use crate::agent::enroll::{RulesCheck, Trigger};
use crate::agent::metrics::Repair;

impl Reconciler {
    /// One pass over every enrolled pod, then the gauge.
    pub(super) async fn protect_all(&mut self) {
        if !*self.synced.borrow() {
            return;
        }
        let uids = self.enroller.uids();
        self.unprotected.retain(|uid, _| uids.contains(uid));
        for uid in uids {
            self.protect(&uid).await;
        }
        self.metrics.set_unprotected(self.unprotected.len());
    }

    /// Checks one enrolled pod and updates the gauge.
    pub(super) async fn protect_one(&mut self, uid: &str) {
        if !*self.synced.borrow() {
            return;
        }
        self.protect(uid).await;
        self.metrics.set_unprotected(self.unprotected.len());
    }

    async fn protect(&mut self, uid: &str) {
        let Some(enrolled) = self.enroller.get(uid).cloned() else {
            self.unprotected.remove(uid);
            return;
        };
        let key = format!("{}/{}", enrolled.namespace, enrolled.name);
        // 1. The netns is still the pod's.
        let pod = self
            .pods
            .get(&key)
            .filter(|p| p.uid().as_deref() == Some(uid))
            .cloned();
        if let Some(pod) = pod {
            if let Some(found) = self.find_netns(uid, &enrolled.ips).await {
                if found.id() != enrolled.netns.id() {
                    tracing::warn!(
                        pod = %key,
                        %uid,
                        old = %enrolled.netns.path().display(),
                        new = %found.path().display(),
                        "the pod's sandbox was replaced: dropping the old netns from the tunnel, enrolling the new one"
                    );
                    self.enroller.unenroll(uid, false).await;
                    let ips = enrolled.ips.clone();
                    match self.enroller.enroll(&pod, found, ips, Trigger::Watch).await {
                        Ok(()) => self.metrics.on_repair(Repair::Sandbox),
                        Err(error) => {
                            // Not enrolled any more: the watch retries it as a running pod.
                            self.retry_later(
                                &key,
                                &format!("re-enrolling the replaced sandbox failed: {error}"),
                            );
                            return;
                        }
                    }
                }
            }
        }
        // 2. The in-pod rules.
        let mut problems = Vec::new();
        match self.enroller.check_rules(uid).await {
            RulesCheck::Intact => {}
            RulesCheck::Restored => {
                tracing::warn!(pod = %key, %uid, "in-pod rules were missing or altered; written again");
                self.metrics.on_repair(Repair::Rules);
            }
            RulesCheck::Broken(why) => problems.push(format!("in-pod rules incomplete: {why}")),
        }
        // 3. The tunnel.
        match self.enroller.serving().await {
            Ok(serving) if !serving.tunnel_connected => problems.push(
                "no tunnel connected: its traffic is redirected to tunnel ports nothing listens on, so refused"
                    .to_owned(),
            ),
            Ok(serving) if !serving.acked.contains(uid) => match self.enroller.resend(uid).await {
                Ok(()) => {
                    tracing::warn!(pod = %key, %uid, "the tunnel did not serve the pod; sent it again");
                    self.metrics.on_repair(Repair::Tunnel);
                }
                Err(error) => problems.push(format!(
                    "the tunnel does not serve it ({error}): its traffic is refused"
                )),
            },
            Ok(_) => {}
            Err(error) => problems.push(format!("asking the ZDS server: {error}")),
        }
        self.note(uid, &key, problems);
    }

    /// Records the pod's state, logging only changes.
    fn note(&mut self, uid: &str, key: &str, problems: Vec<String>) {
        if problems.is_empty() {
            if self.unprotected.remove(uid).is_some() {
                tracing::info!(pod = %key, %uid, "pod protected again");
            }
            return;
        }
        let why = problems.join("; ");
        if self.unprotected.get(uid) != Some(&why) {
            tracing::warn!(pod = %key, %uid, %why, "pod enrolled but unprotected (failing closed)");
        }
        self.unprotected.insert(uid.to_owned(), why);
    }
}

/// Enrolled pods found unprotected: uid → why.
pub(super) type Unprotected = BTreeMap<String, String>;
