//! Whether a stopping agent should uninstall the plugin or leave it for its successor.
//!
//! Istio's rule (`cni/pkg/nodeagent/server.go`, `ShouldStopCleanup`, called from
//! `cni/pkg/cmd/root.go` on shutdown): the agent GETs its own DaemonSet (`istio-cni-node` in
//! the agent's namespace). If it exists and has no deletion timestamp, this is an upgrade or a
//! node reboot: the plugin, its config entry and kubeconfig stay, so new ambient pods stall
//! (the plugin fails closed) until the next agent is up, instead of starting uncaptured. If the
//! DaemonSet is gone, being deleted, or the agent's credentials were revoked (the uninstall
//! removed them), the agent cleans up. Any other failure of the lookup also means "clean up":
//! Istio makes a single attempt in this mode and defaults to cleanup. Istio's env
//! `AMBIENT_DISABLE_SAFE_UPGRADE=true` skips the lookup and always cleans up; that switch
//! belongs to the agent's config.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use tracing::info;

/// What the agent does with the installation when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// Leave binary, config entry and kubeconfig in place: a new agent is coming.
    KeepForUpgrade,
    /// Call [`Installer::uninstall`](super::Installer::uninstall).
    Uninstall,
}

/// Why [`decide`] chose its action, for the shutdown log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    DaemonSetPresent,
    DaemonSetDeleting,
    DaemonSetGone,
    CredentialsRevoked,
    LookupFailed(String),
}

/// The rule itself, over the outcome of the DaemonSet GET.
pub(crate) fn decide(lookup: &Result<DaemonSet, kube::Error>) -> (ShutdownAction, Reason) {
    match lookup {
        Ok(ds) if ds.metadata.deletion_timestamp.is_none() => {
            (ShutdownAction::KeepForUpgrade, Reason::DaemonSetPresent)
        }
        Ok(_) => (ShutdownAction::Uninstall, Reason::DaemonSetDeleting),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            (ShutdownAction::Uninstall, Reason::DaemonSetGone)
        }
        Err(kube::Error::Api(status)) if status.code == 401 || status.reason == "Unauthorized" => {
            (ShutdownAction::Uninstall, Reason::CredentialsRevoked)
        }
        Err(e) => (
            ShutdownAction::Uninstall,
            Reason::LookupFailed(e.to_string()),
        ),
    }
}

/// Looks up the agent's DaemonSet `name` in `namespace` and applies `decide`; logs why.
pub async fn shutdown_action(client: kube::Client, namespace: &str, name: &str) -> ShutdownAction {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    let lookup = api.get(name).await;
    let (action, reason) = decide(&lookup);
    info!(daemonset = %format!("{namespace}/{name}"), ?action, ?reason, "agent stopping");
    action
}

#[cfg(test)]
mod tests;
