//! The enrollment decision shared by the plugin (at `ADD`) and the agent (on every pod or
//! namespace change): is this pod captured by the node tunnel?
//!
//! Facts from istio/istio `cni/pkg/util/{podutil,enablement_selector}.go` and
//! `cni/pkg/plugin/plugin.go`:
//! - enrollment is decided by `enablement_selectors` (see [`selector`]); the defaults select a
//!   pod labelled `istio.io/dataplane-mode=ambient`, or a pod in a namespace with that label
//!   unless the pod says `none`;
//! - host-network pods and sidecar-injected pods (annotation `sidecar.istio.io/status`) are
//!   never enrolled, whatever the selectors say;
//! - `exclude_namespaces` are skipped before anything else (the plugin even before it asks
//!   the API server);
//! - the agent's own pods are recognised by name prefix `istio-cni-node-` in the agent's
//!   namespace (`pod_namespace`), the tunnel's pods by label `app=ztunnel` in that namespace.
//!
//! As in Istio, `istio.io/dataplane-mode=none` on a pod means something only through the
//! selectors (the chart's defaults leave such a pod out; a custom selector may take it in), and
//! an empty selector list enrolls nothing. Pods in a terminal phase are skipped (Istio's agent
//! skips and unenrolls them in its reconcile loop; here the rule says so).

mod selector;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::plugin::config::PluginConfig;
pub use selector::parse_selectors_yaml;
use selector::CompiledPair;
pub use selector::{default_selectors, parse_selectors_json, EnablementSelector, SelectorError};

/// The label that opts a namespace or pod into (or out of) ambient.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";
/// Set by the agent on enrolled pods (removed on unenroll).
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
pub const REDIRECTION_ENABLED: &str = "enabled";
/// Present on pods the sidecar injector handled: such pods are never enrolled.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Per-pod opt-out of inbound capture (a boolean string).
pub const BYPASS_INBOUND_ANNOTATION: &str = "ambient.istio.io/bypass-inbound-capture";
/// Per-pod override of DNS capture (a boolean string).
pub const DNS_CAPTURE_ANNOTATION: &str = "ambient.istio.io/dns-capture";
/// Name prefix of the agent's DaemonSet pods (Istio's `isCNIPod`).
pub const AGENT_POD_PREFIX: &str = "istio-cni-node-";
/// Label value that marks the tunnel's own pods (Istio's `IsZtunnelPod`: `app=ztunnel`).
pub const TUNNEL_APP_LABEL: (&str, &str) = ("app", "ztunnel");

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Enroll,
    Skip(SkipReason),
}

/// Why a pod is not enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod's namespace is in `exclude_namespaces`.
    ExcludedNamespace(String),
    /// One of the agent's own DaemonSet pods.
    AgentPod,
    /// One of the node tunnel's own pods.
    TunnelPod,
    /// The pod has finished (`Succeeded` or `Failed`).
    Terminated(String),
    /// `hostNetwork: true`: its netns is the node's, rules there would break the node.
    HostNetwork,
    /// The sidecar injector handled it (`sidecar.istio.io/status`).
    SidecarInjected,
    /// No enablement selector matches the pod and its namespace.
    NotSelected,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::ExcludedNamespace(ns) => write!(f, "namespace {ns} is excluded"),
            SkipReason::AgentPod => write!(f, "it is one of the CNI agent's own pods"),
            SkipReason::TunnelPod => write!(f, "it is one of the node tunnel's own pods"),
            SkipReason::Terminated(phase) => write!(f, "it has terminated (phase {phase})"),
            SkipReason::HostNetwork => write!(f, "it uses the host network"),
            SkipReason::SidecarInjected => {
                write!(f, "it has a sidecar ({SIDECAR_STATUS_ANNOTATION} is set)")
            }
            SkipReason::NotSelected => write!(
                f,
                "no enablement selector matches it and its namespace (under the chart's \
                 defaults: neither is labelled {DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}, \
                 or the pod is labelled {DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_NONE})"
            ),
        }
    }
}

/// The rules, built once from the plugin config or the agent's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRules {
    exclude_namespaces: Vec<String>,
    own_namespace: String,
    agent_pod_prefix: String,
    selectors: Vec<CompiledPair>,
}

impl EnrollmentRules {
    /// `selectors` as given: a pod is selected when any of them matches, so none selects
    /// nothing (Istio's empty list). Empty entries in `exclude_namespaces` are dropped (Istio
    /// builds the list by splitting a comma-separated string).
    pub fn new(
        exclude_namespaces: Vec<String>,
        own_namespace: impl Into<String>,
        selectors: &[EnablementSelector],
    ) -> Result<Self, SelectorError> {
        let selectors = selectors
            .iter()
            .enumerate()
            .map(|(i, s)| CompiledPair::compile(i, s))
            .collect::<Result<_, _>>()?;
        Ok(EnrollmentRules {
            exclude_namespaces: exclude_namespaces
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            own_namespace: own_namespace.into(),
            agent_pod_prefix: AGENT_POD_PREFIX.to_string(),
            selectors,
        })
    }

    /// The rules of a plugin config entry; without `enablement_selectors` the chart's
    /// defaults (our agent always writes the list it uses).
    pub fn from_plugin_config(config: &PluginConfig) -> Result<Self, SelectorError> {
        let selectors = match &config.enablement_selectors {
            Some(values) => parse_selectors_json(values)?,
            None => default_selectors(),
        };
        Self::new(
            config.exclude_namespaces.clone(),
            config.pod_namespace.clone(),
            &selectors,
        )
    }

    /// Recognise the agent's pods by another name prefix (default [`AGENT_POD_PREFIX`]).
    pub fn with_agent_pod_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.agent_pod_prefix = prefix.into();
        self
    }

    pub fn is_excluded_namespace(&self, namespace: &str) -> bool {
        self.exclude_namespaces.iter().any(|n| n == namespace)
    }

    /// The checks that need only the pod's namespace and name, so the plugin can make them
    /// before it talks to the API server: an excluded namespace, or the agent's own pod
    /// (which must start even when the agent, and so the kubeconfig, is not there yet).
    pub fn skip_by_name(&self, namespace: &str, pod_name: &str) -> Option<SkipReason> {
        if self.is_excluded_namespace(namespace) {
            return Some(SkipReason::ExcludedNamespace(namespace.to_string()));
        }
        if !self.own_namespace.is_empty()
            && namespace == self.own_namespace
            && !self.agent_pod_prefix.is_empty()
            && pod_name.starts_with(&self.agent_pod_prefix)
        {
            return Some(SkipReason::AgentPod);
        }
        None
    }

    /// Decides for `pod`; `namespace` is its Namespace object (`None` when unknown: no
    /// namespace labels then). The pod's namespace name comes from its metadata, falling
    /// back to the Namespace object's name.
    pub fn decide(&self, pod: &Pod, namespace: Option<&Namespace>) -> Decision {
        let empty = BTreeMap::new();
        let ns_name = pod
            .metadata
            .namespace
            .as_deref()
            .or_else(|| namespace.and_then(|n| n.metadata.name.as_deref()))
            .unwrap_or_default();
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let ns_labels = namespace
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&empty);

        if let Some(reason) = self.skip_by_name(ns_name, pod_name) {
            return Decision::Skip(reason);
        }
        let (app_key, app_value) = TUNNEL_APP_LABEL;
        if !self.own_namespace.is_empty()
            && ns_name == self.own_namespace
            && pod_labels.get(app_key).map(String::as_str) == Some(app_value)
        {
            return Decision::Skip(SkipReason::TunnelPod);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if let Some(phase @ ("Succeeded" | "Failed")) = phase {
            return Decision::Skip(SkipReason::Terminated(phase.to_string()));
        }
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            return Decision::Skip(SkipReason::HostNetwork);
        }
        if annotations.contains_key(SIDECAR_STATUS_ANNOTATION) {
            return Decision::Skip(SkipReason::SidecarInjected);
        }
        if self
            .selectors
            .iter()
            .any(|s| s.matches(pod_labels, ns_labels))
        {
            Decision::Enroll
        } else {
            Decision::Skip(SkipReason::NotSelected)
        }
    }
}
