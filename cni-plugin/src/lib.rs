//! nodetunnel's CNI side: a chained CNI plugin and a node agent that together enroll pods into
//! the node tunnel when their namespace (or the pod) is labelled
//! `istio.io/dataplane-mode=ambient`. Behaviour and wire formats follow Istio's `istio-cni`
//! (see docs/contracts.md, "CNI plugin ↔ node agent"), so either can stand in for the other.
//!
//! Modules, along the flow of a pod:
//! - `ambient` (private): the label rules that decide whether a pod is enrolled (plugin and agent).
//! - [`plugin`]: the CNI plugin binary's logic (`VERSION`/`ADD`/`DEL`/`CHECK`), its flat
//!   config, and the prevResult passthrough.
//! - [`event`]: the pod event the plugin POSTs to the agent over `<run_dir>/pluginevent.sock`.
//! - [`node`]: what the agent programs on the node: entering a pod's netns, the in-pod
//!   redirection rules, the host probe SNAT, finding running pods' netns under `/proc`.
//! - [`install`]: the plugin binary, kubeconfig and conflist entry on the host, kept in place.
//! - [`agent`]: the node agent binary: Kubernetes watches, enrollment, the plugin event server,
//!   the ZDS server towards the tunnel, health endpoints.

pub mod agent;
mod ambient;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod install;
pub mod node;
pub mod plugin;
