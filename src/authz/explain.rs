//! The whole reasoning behind one decision, for the admin endpoint: every policy considered
//! (scope, action, dry-run), which rule, clause, match and field matched or why none did, and
//! the decision with the same reason string the access log prints.
//!
//! It evaluates every rule of every applicable policy (the fast path stops early) with the same
//! per-field predicates as [`super::authorize`], and takes the decision from the same
//! `decide` (there is one implementation of Istio's order). Debug builds check each policy's
//! traced outcome against the fast matcher's.

use std::fmt;

use serde::Serialize;

use super::matching::{self, Field, Subject};
use super::{AllowReason, ConnectionInfo, Decision, DenyReason, Enforce};
use crate::state::{
    Applicable, Policy, PolicyAction, PolicyMatch, PolicyScope, ServiceAccountMatch, Store,
    StringMatch,
};

/// What the admin endpoint answers (serialized as JSON).
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub connection: ConnectionView,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why, exactly as the access log's denial line says it.
    pub reason: String,
    /// What the decision would be with the dry-run policies enforced; absent when no dry-run
    /// policy applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_decision: Option<DryRunView>,
    /// Every policy that applies to the destination workload, in evaluation order.
    pub policies: Vec<PolicyExplanation>,
    /// Policies the workload lists that the store does not hold (skipped).
    pub missing_policies: Vec<String>,
    /// The order the decision follows, for readers who do not know it by heart.
    pub rule: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ConnectionView {
    /// The verified peer identity, or null for plaintext.
    pub source_identity: Option<String>,
    /// The identity as principal values are compared against (without `spiffe://`).
    pub source_principal: Option<String>,
    pub source_ip: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination: String,
}

#[derive(Debug, Serialize)]
pub struct DryRunView {
    pub decision: &'static str,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PolicyExplanation {
    /// `namespace/name`.
    pub policy: String,
    /// Why it applies: `global`, `namespace` or `workload_selector`.
    pub scope: &'static str,
    /// `ALLOW` or `DENY`.
    pub action: &'static str,
    pub dry_run: bool,
    /// Whether any rule matched.
    pub matched: bool,
    /// True for the policy that decided the connection.
    pub decided: bool,
    /// One line: which rule matched, or why none did.
    pub why: String,
    pub rules: Vec<RuleExplanation>,
}

#[derive(Debug, Serialize)]
pub struct RuleExplanation {
    pub rule: usize,
    pub matched: bool,
    pub why: String,
    pub clauses: Vec<ClauseExplanation>,
}

#[derive(Debug, Serialize)]
pub struct ClauseExplanation {
    pub clause: usize,
    pub matched: bool,
    pub why: String,
    pub matches: Vec<MatchExplanation>,
}

#[derive(Debug, Serialize)]
pub struct MatchExplanation {
    #[serde(rename = "match")]
    pub index: usize,
    pub matched: bool,
    pub why: String,
    /// Each field the match sets (a `not_` list is its own entry).
    pub fields: Vec<FieldExplanation>,
}

#[derive(Debug, Serialize)]
pub struct FieldExplanation {
    /// The proto field name: `principals`, `not_source_ips`, ...
    pub field: String,
    pub values: Vec<String>,
    pub holds: bool,
    pub why: String,
}

const RULE: &str = "any matching DENY policy denies; otherwise, with no ALLOW policy for the \
                    workload, allow; otherwise any matching ALLOW policy allows; otherwise deny. \
                    Dry-run policies are evaluated but never enforced.";

/// Explains how [`super::authorize`] decides `connection` on `store`.
pub fn explain(connection: &ConnectionInfo, store: &Store) -> Explanation {
    let subject = super::subject(connection);
    let mut policies = Vec::new();
    let mut missing = Vec::new();
    store.for_each_policy(&connection.destination, |applicable| {
        match applicable {
            Applicable::Found(scope, policy) => {
                policies.push(explain_policy(scope, policy, &subject));
            }
            Applicable::Missing(key) => missing.push(key.to_string()),
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    let decision = super::decide(store, connection, &subject, Enforce::Enforced, |_| {});
    let dry_run_decision = policies.iter().any(|p| p.dry_run).then(|| {
        let would_be = super::decide(store, connection, &subject, Enforce::All, |_| {});
        DryRunView {
            decision: word(&would_be),
            reason: reason(&would_be),
        }
    });
    let decided_by = match &decision {
        Decision::Deny(DenyReason::DenyPolicy { policy })
        | Decision::Allow(AllowReason::AllowPolicy { policy }) => Some(policy.as_str()),
        _ => None,
    };
    for p in policies.iter_mut() {
        p.decided = !p.dry_run && decided_by == Some(p.policy.as_str());
    }
    Explanation {
        connection: ConnectionView {
            source_identity: connection.source_identity.as_ref().map(|i| i.to_string()),
            source_principal: subject.principal().map(str::to_string),
            source_ip: connection.source_ip.to_string(),
            destination_workload: connection.destination.uid.clone(),
            destination_namespace: connection.destination.namespace.clone(),
            destination: connection.destination_addr.to_string(),
        },
        decision: word(&decision),
        reason: reason(&decision),
        dry_run_decision,
        policies,
        missing_policies: missing,
        rule: RULE,
    }
}

fn word(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow(_) => "allow",
        Decision::Deny(_) => "deny",
    }
}

fn reason(decision: &Decision) -> String {
    match decision {
        Decision::Allow(r) => r.to_string(),
        Decision::Deny(r) => r.to_string(),
    }
}

fn explain_policy(scope: PolicyScope, policy: &Policy, subject: &Subject<'_>) -> PolicyExplanation {
    let rules: Vec<RuleExplanation> = policy
        .rules
        .iter()
        .enumerate()
        .map(|(r, rule)| {
            let clauses: Vec<ClauseExplanation> = rule
                .clauses
                .iter()
                .enumerate()
                .map(|(c, clause)| explain_clause(c, &clause.matches, subject))
                .collect();
            let matched = clauses.iter().all(|c| c.matched);
            let why = if clauses.is_empty() {
                "no clauses: matches every connection".to_string()
            } else if matched {
                "every clause is satisfied".to_string()
            } else {
                let failed: Vec<String> = clauses
                    .iter()
                    .filter(|c| !c.matched)
                    .map(|c| c.clause.to_string())
                    .collect();
                format!("clause {} not satisfied", failed.join(", "))
            };
            RuleExplanation {
                rule: r,
                matched,
                why,
                clauses,
            }
        })
        .collect();
    let first = rules.iter().find(|r| r.matched).map(|r| r.rule);
    debug_assert_eq!(first, matching::policy_matches(policy, subject));
    let why = match first {
        Some(r) => format!("rule {r} matched"),
        None if rules.is_empty() => "no rules: matches nothing".to_string(),
        None => "no rule matched".to_string(),
    };
    PolicyExplanation {
        policy: policy.key(),
        scope: match scope {
            PolicyScope::Global => "global",
            PolicyScope::Namespace => "namespace",
            PolicyScope::WorkloadSelector => "workload_selector",
        },
        action: match policy.action {
            PolicyAction::Allow => "ALLOW",
            PolicyAction::Deny => "DENY",
        },
        dry_run: policy.dry_run,
        matched: first.is_some(),
        decided: false,
        why,
        rules,
    }
}

fn explain_clause(
    index: usize,
    matches: &[PolicyMatch],
    subject: &Subject<'_>,
) -> ClauseExplanation {
    let explained: Vec<MatchExplanation> = matches
        .iter()
        .enumerate()
        .map(|(i, m)| explain_match(i, m, subject))
        .collect();
    let matched = explained.is_empty() || explained.iter().any(|m| m.matched);
    let why = if explained.is_empty() {
        "no matches: satisfied".to_string()
    } else if let Some(m) = explained.iter().find(|m| m.matched) {
        format!("match {} holds", m.index)
    } else {
        "no match holds".to_string()
    };
    ClauseExplanation {
        clause: index,
        matched,
        why,
        matches: explained,
    }
}

fn explain_match(index: usize, m: &PolicyMatch, subject: &Subject<'_>) -> MatchExplanation {
    if matching::is_empty(m) {
        return MatchExplanation {
            index,
            matched: false,
            why: "sets no field: satisfies nothing".to_string(),
            fields: vec![],
        };
    }
    let mut fields = Vec::new();
    for field in Field::ALL {
        let (positive, negative) = field.values(m);
        if positive == 0 && negative == 0 {
            continue;
        }
        let detail = field.detail(m, subject);
        let attribute = Attribute::of(field, subject);
        if positive > 0 {
            let values = values(field, m, false);
            let (holds, why) = match detail.positive_hit {
                Some(i) => (true, format!("{attribute} matches {}", values[i])),
                None => (false, attribute.no_match("none of the values")),
            };
            fields.push(FieldExplanation {
                field: field.name().to_string(),
                values,
                holds,
                why,
            });
        }
        if negative > 0 {
            let values = values(field, m, true);
            let (holds, why) = match detail.negative_hit {
                Some(i) => (false, format!("{attribute} matches excluded {}", values[i])),
                None => (true, attribute.no_match("none of the excluded values")),
            };
            fields.push(FieldExplanation {
                field: format!("not_{}", field.name()),
                values,
                holds,
                why,
            });
        }
    }
    let failed: Vec<&str> = fields
        .iter()
        .filter(|f| !f.holds)
        .map(|f| f.field.as_str())
        .collect();
    let matched = failed.is_empty();
    MatchExplanation {
        index,
        matched,
        why: if matched {
            "every field it sets holds".to_string()
        } else {
            format!("{} does not hold", failed.join(", "))
        },
        fields,
    }
}

/// The connection attribute a field is compared with, as the explanation words it.
enum Attribute {
    /// An identity attribute of a connection without a verified identity.
    NoIdentity(&'static str),
    Value(String),
}

impl Attribute {
    fn of(field: Field, subject: &Subject<'_>) -> Attribute {
        let identity = subject.identity;
        match field {
            Field::Namespaces => match identity {
                Some(i) => Attribute::Value(format!("source namespace {:?}", i.namespace)),
                None => Attribute::NoIdentity("namespace"),
            },
            Field::ServiceAccounts => match identity {
                Some(i) => Attribute::Value(format!(
                    "source service account {}/{}",
                    i.namespace, i.service_account
                )),
                None => Attribute::NoIdentity("service account"),
            },
            Field::Principals => match subject.principal() {
                Some(p) => Attribute::Value(format!("source principal {p:?}")),
                None => Attribute::NoIdentity("principal"),
            },
            Field::SourceIps => Attribute::Value(format!("source IP {}", subject.source_ip)),
            Field::DestinationIps => {
                Attribute::Value(format!("destination IP {}", subject.destination.ip()))
            }
            Field::DestinationPorts => {
                Attribute::Value(format!("destination port {}", subject.destination.port()))
            }
        }
    }

    fn no_match(&self, which: &str) -> String {
        match self {
            Attribute::NoIdentity(what) => {
                format!("no verified identity (plaintext), so no {what}: {which} can match")
            }
            Attribute::Value(v) => format!("{v} matches {which}"),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::NoIdentity(what) => write!(f, "no {what}"),
            Attribute::Value(v) => f.write_str(v),
        }
    }
}

/// The values of one list of `m`, as the explanation prints them.
fn values(field: Field, m: &PolicyMatch, negated: bool) -> Vec<String> {
    fn strings(v: &[StringMatch]) -> Vec<String> {
        v.iter().map(string_match).collect()
    }
    fn accounts(v: &[ServiceAccountMatch]) -> Vec<String> {
        v.iter()
            .map(|a| format!("{}/{}", a.namespace, a.service_account))
            .collect()
    }
    fn shown<T: ToString>(v: &[T]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }
    match (field, negated) {
        (Field::Namespaces, false) => strings(&m.namespaces),
        (Field::Namespaces, true) => strings(&m.not_namespaces),
        (Field::ServiceAccounts, false) => accounts(&m.service_accounts),
        (Field::ServiceAccounts, true) => accounts(&m.not_service_accounts),
        (Field::Principals, false) => strings(&m.principals),
        (Field::Principals, true) => strings(&m.not_principals),
        (Field::SourceIps, false) => shown(&m.source_ips),
        (Field::SourceIps, true) => shown(&m.not_source_ips),
        (Field::DestinationIps, false) => shown(&m.destination_ips),
        (Field::DestinationIps, true) => shown(&m.not_destination_ips),
        (Field::DestinationPorts, false) => shown(&m.destination_ports),
        (Field::DestinationPorts, true) => shown(&m.not_destination_ports),
    }
}

fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("exact {v:?}"),
        StringMatch::Prefix(v) => format!("prefix {v:?}"),
        StringMatch::Suffix(v) => format!("suffix {v:?}"),
        StringMatch::Presence => "presence (any value)".to_string(),
    }
}
