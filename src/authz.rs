//! The authorize step: whether one inbound connection may reach its destination workload, and
//! why — Istio's L4 AuthorizationPolicy semantics over the policies in the store.
//!
//! Both inbound paths (HBONE and plaintext) describe the connection the same way, as a
//! [`ConnectionInfo`], once its target workload is known and before anything is dialed, and
//! act on the [`Decision`]: a denied HBONE stream is refused (401) while its HTTP/2 connection
//! stays up; a denied plaintext connection is closed. The reason is logged either way.
//!
//! Which policies apply ([`Store::policies_for`]): every GLOBAL one (istiod's root-namespace
//! policies, and the mesh-wide STRICT mTLS policy), the NAMESPACE ones of the destination's
//! namespace, and the WORKLOAD_SELECTOR ones the destination workload lists. A listed policy
//! the store lacks is skipped with a warning: it is in flight from the control plane.
//!
//! The order, as Istio documents it: any matching DENY policy denies; else, with no ALLOW
//! policy for the workload, allow; else any matching ALLOW policy allows; else deny.
//! `dry_run` policies are evaluated on the side and logged, never enforced. Matching itself is
//! in [`matching`]; [`explain()`] gives the whole reasoning for the admin endpoint, from the
//! same predicates.

mod explain;
mod matching;

pub use explain::{explain, Explanation};

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;

use matching::{policy_matches, Subject};

use crate::identity::Identity;
use crate::state::{Applicable, Policy, PolicyAction, Store, Workload};

/// One inbound connection, as the authorize step sees it.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The identity the peer proved with its TLS certificate (HBONE); `None` for plaintext,
    /// where nothing about the source is proven.
    pub source_identity: Option<Identity>,
    /// The source address of the connection (for HBONE, the peer tunnel's address).
    pub source_ip: IpAddr,
    /// The local workload the connection is for.
    pub destination: Arc<Workload>,
    /// The address and port on that workload the connection asked for.
    pub destination_addr: SocketAddr,
}

/// Whether the connection may proceed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(AllowReason),
    Deny(DenyReason),
}

/// Why a connection was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowReason {
    /// No DENY policy matched and no ALLOW policy applies to the workload.
    NoAllowPolicies,
    /// The ALLOW policy `namespace/name` matched (and no DENY policy did).
    AllowPolicy { policy: String },
}

/// Why a connection was denied: which policy decided it, or why none allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy (`namespace/name`) matched the connection.
    DenyPolicy { policy: String },
    /// ALLOW policies apply to the destination workload (their keys, in evaluation order)
    /// and none of them matched.
    NoAllowPolicyMatched { allow_policies: Vec<String> },
}

impl DenyReason {
    /// The policy that decided, for metrics: the matching DENY policy, or empty when the
    /// denial comes from no ALLOW policy matching.
    pub fn policy(&self) -> &str {
        match self {
            DenyReason::DenyPolicy { policy } => policy,
            DenyReason::NoAllowPolicyMatched { .. } => "",
        }
    }

    /// A short, stable name of the kind of denial (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            DenyReason::DenyPolicy { .. } => "deny_policy",
            DenyReason::NoAllowPolicyMatched { .. } => "no_allow_match",
        }
    }
}

impl fmt::Display for AllowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowReason::NoAllowPolicies => {
                f.write_str("no DENY policy matched and no ALLOW policy applies")
            }
            AllowReason::AllowPolicy { policy } => write!(f, "ALLOW policy {policy} matched"),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::DenyPolicy { policy } => write!(f, "DENY policy {policy} matched"),
            DenyReason::NoAllowPolicyMatched { allow_policies } => write!(
                f,
                "no ALLOW policy matched (ALLOW policies applying: {})",
                allow_policies.join(", ")
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(reason) => write!(f, "allowed: {reason}"),
            Decision::Deny(reason) => write!(f, "denied: {reason}"),
        }
    }
}

/// Decides `connection` against the authorization policies in `store` (see the module doc).
/// Dry-run policies that would change the decision are logged (target `authz`).
pub fn authorize(connection: &ConnectionInfo, store: &Store) -> Decision {
    let subject = subject(connection);
    let mut dry_run_present = false;
    let destination = &connection.destination;
    let decision = decide(
        store,
        connection,
        &subject,
        Enforce::Enforced,
        |applicable| match applicable {
            Applicable::Found(_, policy) => dry_run_present |= policy.dry_run,
            Applicable::Missing(key) => tracing::warn!(
                target: "authz",
                policy = key,
                workload = %destination.uid,
                "skipping policy {key}: the workload lists it but it is not known (yet)"
            ),
        },
    );
    if dry_run_present {
        let would_be = decide(store, connection, &subject, Enforce::All, |_| {});
        log_dry_run(connection, &decision, &would_be);
    }
    decision
}

/// Which policies take part in a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Enforce {
    /// The enforced ones: dry-run policies are left out.
    Enforced,
    /// All of them, dry-run included: what the decision would be if they were enforced.
    All,
}

fn subject(connection: &ConnectionInfo) -> Subject<'_> {
    Subject::new(
        connection.source_identity.as_ref(),
        connection.source_ip,
        connection.destination_addr,
    )
}

/// One pass over the applicable policies: the first matching DENY decides at once; ALLOW
/// policies are evaluated until one matches. `seen` is called with every applicable policy
/// visited, missing ones included (so the caller can warn about those and learn whether
/// dry-run ones exist without a second lookup). The only implementation of Istio's order:
/// the explanation calls it too.
fn decide(
    store: &Store,
    connection: &ConnectionInfo,
    subject: &Subject<'_>,
    enforce: Enforce,
    mut seen: impl FnMut(Applicable<'_>),
) -> Decision {
    // ALLOW policies evaluated without a match, named only if the connection is denied.
    let mut unmatched_allow: Vec<&Policy> = Vec::new();
    let mut allowed_by: Option<&Policy> = None;
    let denied_by = store.for_each_policy(&connection.destination, |applicable| {
        seen(applicable);
        let Applicable::Found(_, policy) = applicable else {
            return ControlFlow::Continue(());
        };
        let policy: &Policy = policy;
        if policy.dry_run && enforce == Enforce::Enforced {
            return ControlFlow::Continue(());
        }
        match policy.action {
            PolicyAction::Deny if policy_matches(policy, subject).is_some() => {
                return ControlFlow::Break(policy);
            }
            PolicyAction::Deny => {}
            // Once one ALLOW matched, the rest cannot change the outcome.
            PolicyAction::Allow if allowed_by.is_some() => {}
            PolicyAction::Allow if policy_matches(policy, subject).is_some() => {
                allowed_by = Some(policy);
            }
            PolicyAction::Allow => unmatched_allow.push(policy),
        }
        ControlFlow::Continue(())
    });
    if let Some(deny) = denied_by {
        return Decision::Deny(DenyReason::DenyPolicy { policy: deny.key() });
    }
    match allowed_by {
        Some(allow) => Decision::Allow(AllowReason::AllowPolicy {
            policy: allow.key(),
        }),
        None if unmatched_allow.is_empty() => Decision::Allow(AllowReason::NoAllowPolicies),
        None => Decision::Deny(DenyReason::NoAllowPolicyMatched {
            allow_policies: unmatched_allow.iter().map(|p| p.key()).collect(),
        }),
    }
}

fn log_dry_run(connection: &ConnectionInfo, decision: &Decision, would_be: &Decision) {
    if decision == would_be {
        return;
    }
    tracing::info!(
        target: "authz",
        src = %connection.source_ip,
        src_identity = connection.source_identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
        dst = %connection.destination_addr,
        dst_workload = %connection.destination.uid,
        "dry-run: with dry-run policies enforced this connection would be {would_be} (it is {decision})"
    );
}

#[cfg(test)]
mod tests;
