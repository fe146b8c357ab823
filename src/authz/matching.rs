//! Whether one policy matches one connection: Istio's L4 matching rules, as ztunnel applies
//! them to the policies istiod sends.
//!
//! - A policy matches when any of its rules does; a policy without rules matches nothing
//!   (`spec: {}` on an ALLOW policy therefore allows nothing).
//! - A rule matches when all its clauses do; a rule without clauses matches everything.
//! - A clause is satisfied when any of its matches is; a clause without matches is satisfied.
//!   A match with no field set is skipped (it satisfies nothing).
//! - A match is satisfied when every field it sets is: a positive field when any value
//!   matches, a `not_*` field when none does.
//!
//! The source's identity values (principal, namespace, service account) exist only for a
//! connection whose peer proved an identity with mTLS. Without one, no value of those fields
//! matches, so a positive field fails and a `not_*` field holds: `not_principals: [presence]`
//! is exactly "no verified identity", which is how istiod writes STRICT mTLS.
//!
//! The per-field predicates here are shared by the fast path ([`policy_matches`]) and the
//! explanation ([`super::explain`]), so both always agree on what a value matches.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::identity::Identity;
use crate::state::{Policy, PolicyMatch, ServiceAccountMatch, StringMatch};

/// What the matcher reads off a connection, computed once per decision.
pub(super) struct Subject<'a> {
    /// The proven identity, if any.
    pub identity: Option<&'a Identity>,
    /// The identity as istiod writes principals, without `spiffe://`
    /// (`cluster.local/ns/default/sa/client`); formatted on first use, since most policies
    /// never look at it. Read it with [`Subject::principal`].
    principal: std::cell::OnceCell<Option<String>>,
    pub source_ip: IpAddr,
    pub destination: SocketAddr,
}

impl<'a> Subject<'a> {
    pub fn new(
        identity: Option<&'a Identity>,
        source_ip: IpAddr,
        destination: SocketAddr,
    ) -> Subject<'a> {
        Subject {
            identity,
            principal: std::cell::OnceCell::new(),
            source_ip,
            destination,
        }
    }
}

impl Subject<'_> {
    /// The principal (see the field), `None` without a verified identity.
    pub fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| self.identity.map(principal_of))
            .as_deref()
    }
}

/// `spiffe://td/ns/x/sa/y` → `td/ns/x/sa/y`: the form principal values are compared in.
pub(super) fn principal_of(identity: &Identity) -> String {
    format!(
        "{}/ns/{}/sa/{}",
        identity.trust_domain, identity.namespace, identity.service_account
    )
}

/// The index of the first rule of `policy` that matches, if any.
pub(super) fn policy_matches(policy: &Policy, subject: &Subject<'_>) -> Option<usize> {
    policy.rules.iter().position(|rule| {
        rule.clauses.iter().all(|clause| {
            clause.matches.is_empty() || clause.matches.iter().any(|m| match_holds(m, subject))
        })
    })
}

/// Whether every field `m` sets holds for `subject` (false for a match that sets none).
fn match_holds(m: &PolicyMatch, subject: &Subject<'_>) -> bool {
    if is_empty(m) {
        return false;
    }
    Field::ALL
        .iter()
        .all(|field| field.holds(m, subject) != FieldOutcome::Fails)
}

/// True when the match sets no field at all.
pub(super) fn is_empty(m: &PolicyMatch) -> bool {
    Field::ALL.iter().all(|f| f.values(m) == (0, 0))
}

/// The kinds of condition a match can set, each with its positive and `not_` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Namespaces,
    ServiceAccounts,
    Principals,
    SourceIps,
    DestinationIps,
    DestinationPorts,
}

/// How one field of a match came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldOutcome {
    /// The match does not set this field.
    Unset,
    Holds,
    Fails,
}

/// Which value of a field decided it: the positive value that matched (or none did), and the
/// `not_` value that matched (which fails the field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FieldDetail {
    /// Index of the first positive value that matches (`None`: none does, or none is set).
    pub positive_hit: Option<usize>,
    /// Index of the first `not_` value that matches (`None`: none does, or none is set).
    pub negative_hit: Option<usize>,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::Namespaces,
        Field::ServiceAccounts,
        Field::Principals,
        Field::SourceIps,
        Field::DestinationIps,
        Field::DestinationPorts,
    ];

    /// The field's name as in the proto (its `not_` twin is `not_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Field::Namespaces => "namespaces",
            Field::ServiceAccounts => "service_accounts",
            Field::Principals => "principals",
            Field::SourceIps => "source_ips",
            Field::DestinationIps => "destination_ips",
            Field::DestinationPorts => "destination_ports",
        }
    }

    /// How many positive and `not_` values `m` sets for this field.
    pub fn values(self, m: &PolicyMatch) -> (usize, usize) {
        match self {
            Field::Namespaces => (m.namespaces.len(), m.not_namespaces.len()),
            Field::ServiceAccounts => (m.service_accounts.len(), m.not_service_accounts.len()),
            Field::Principals => (m.principals.len(), m.not_principals.len()),
            Field::SourceIps => (m.source_ips.len(), m.not_source_ips.len()),
            Field::DestinationIps => (m.destination_ips.len(), m.not_destination_ips.len()),
            Field::DestinationPorts => (m.destination_ports.len(), m.not_destination_ports.len()),
        }
    }

    /// Whether this field of `m` holds for `subject`.
    pub fn holds(self, m: &PolicyMatch, subject: &Subject<'_>) -> FieldOutcome {
        let (positive, negative) = self.values(m);
        if positive == 0 && negative == 0 {
            return FieldOutcome::Unset;
        }
        let detail = self.detail(m, subject);
        let positive_ok = positive == 0 || detail.positive_hit.is_some();
        let negative_ok = detail.negative_hit.is_none();
        if positive_ok && negative_ok {
            FieldOutcome::Holds
        } else {
            FieldOutcome::Fails
        }
    }

    /// Which positive and `not_` values of this field match `subject`.
    pub fn detail(self, m: &PolicyMatch, subject: &Subject<'_>) -> FieldDetail {
        fn first<T>(values: &[T], hit: impl Fn(&T) -> bool) -> Option<usize> {
            values.iter().position(hit)
        }
        let (pos, neg) = match self {
            Field::Namespaces => {
                let ns = subject.identity.map(|i| i.namespace.as_str());
                let hit = |v: &StringMatch| ns.is_some_and(|ns| string_matches(v, ns));
                (first(&m.namespaces, hit), first(&m.not_namespaces, hit))
            }
            Field::ServiceAccounts => {
                let hit = |v: &ServiceAccountMatch| {
                    subject.identity.is_some_and(|i| {
                        i.namespace == v.namespace && i.service_account == v.service_account
                    })
                };
                (
                    first(&m.service_accounts, hit),
                    first(&m.not_service_accounts, hit),
                )
            }
            Field::Principals => {
                let principal = subject.principal();
                let hit = |v: &StringMatch| principal.is_some_and(|p| string_matches(v, p));
                (first(&m.principals, hit), first(&m.not_principals, hit))
            }
            Field::SourceIps => {
                let hit = |net: &IpNet| net.contains(&subject.source_ip);
                (first(&m.source_ips, hit), first(&m.not_source_ips, hit))
            }
            Field::DestinationIps => {
                let ip = subject.destination.ip();
                let hit = |net: &IpNet| net.contains(&ip);
                (
                    first(&m.destination_ips, hit),
                    first(&m.not_destination_ips, hit),
                )
            }
            Field::DestinationPorts => {
                let port = subject.destination.port();
                let hit = |p: &u16| *p == port;
                (
                    first(&m.destination_ports, hit),
                    first(&m.not_destination_ports, hit),
                )
            }
        };
        FieldDetail {
            positive_hit: pos,
            negative_hit: neg,
        }
    }
}

/// Istio's string match: exact, prefix, suffix, or presence (any non-empty value).
pub(super) fn string_matches(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(v) => value == v,
        StringMatch::Prefix(v) => value.starts_with(v.as_str()),
        StringMatch::Suffix(v) => value.ends_with(v.as_str()),
        StringMatch::Presence => !value.is_empty(),
    }
}
