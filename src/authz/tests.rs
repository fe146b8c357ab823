//! The decision table: every match kind, every negation, each scope, dry-run, ordering,
//! unknown policies, IPv4 and IPv6 ranges, plaintext and verified identities. Each case is
//! checked against both the fast path ([`authorize`]) and the explanation ([`explain()`]).

use super::*;
use crate::state::fixtures::workload;
use crate::state::{
    PolicyClause, PolicyMatch, PolicyRule, PolicyScope, ServiceAccountMatch, StringMatch,
};
use ipnet::IpNet;

const SERVER_IP: &str = "10.77.2.10";
const SERVER_IP6: &str = "fd00:2::10";

fn client() -> Option<Identity> {
    Some(Identity::new("cluster.local", "default", "client"))
}
fn client2() -> Option<Identity> {
    Some(Identity::new("cluster.local", "default", "client2"))
}
fn intruder() -> Option<Identity> {
    Some(Identity::new("cluster.local", "other", "intruder"))
}
/// Same namespace and service account as `client`, another trust domain.
fn foreign() -> Option<Identity> {
    Some(Identity::new("other.td", "default", "client"))
}
const PLAINTEXT: Option<Identity> = None;

fn exact(v: &str) -> StringMatch {
    StringMatch::Exact(v.into())
}
fn prefix(v: &str) -> StringMatch {
    StringMatch::Prefix(v.into())
}
fn suffix(v: &str) -> StringMatch {
    StringMatch::Suffix(v.into())
}
fn net(v: &str) -> IpNet {
    v.parse().unwrap()
}
fn sa(ns: &str, name: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

/// A policy whose one rule has one clause per entry of `clauses` (each a list of matches).
fn policy(
    key: &str,
    scope: PolicyScope,
    action: PolicyAction,
    rules: Vec<Vec<Vec<PolicyMatch>>>,
) -> Policy {
    let (namespace, name) = key.split_once('/').unwrap();
    Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action,
        rules: rules
            .into_iter()
            .map(|clauses| PolicyRule {
                clauses: clauses
                    .into_iter()
                    .map(|matches| PolicyClause { matches })
                    .collect(),
            })
            .collect(),
        dry_run: false,
    }
}

/// A namespace-scoped policy in `default` with one rule of one clause of one match.
fn ns_policy(name: &str, action: PolicyAction, m: PolicyMatch) -> Policy {
    policy(
        &format!("default/{name}"),
        PolicyScope::Namespace,
        action,
        vec![vec![vec![m]]],
    )
}
fn allow(m: PolicyMatch) -> Policy {
    ns_policy("allow", PolicyAction::Allow, m)
}
fn deny(m: PolicyMatch) -> Policy {
    ns_policy("deny", PolicyAction::Deny, m)
}
/// A policy whose single rule has no clauses: it matches every connection.
fn everything(key: &str, scope: PolicyScope, action: PolicyAction) -> Policy {
    policy(key, scope, action, vec![vec![]])
}
/// istiod's conversion of a STRICT PeerAuthentication: DENY what has no principal.
fn strict(key: &str, scope: PolicyScope) -> Policy {
    policy(
        key,
        scope,
        PolicyAction::Deny,
        vec![vec![vec![PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        }]]],
    )
}
fn dry(mut p: Policy) -> Policy {
    p.dry_run = true;
    p
}

fn m() -> PolicyMatch {
    PolicyMatch::default()
}

#[derive(Debug)]
enum Expect {
    /// Allowed: no ALLOW policy applies.
    Open,
    AllowedBy(&'static str),
    DeniedBy(&'static str),
    /// Denied: ALLOW policies apply (these, in order) and none matched.
    NotAllowed(&'static [&'static str]),
}

impl Expect {
    fn decision(&self) -> Decision {
        match self {
            Expect::Open => Decision::Allow(AllowReason::NoAllowPolicies),
            Expect::AllowedBy(p) => Decision::Allow(AllowReason::AllowPolicy {
                policy: p.to_string(),
            }),
            Expect::DeniedBy(p) => Decision::Deny(DenyReason::DenyPolicy {
                policy: p.to_string(),
            }),
            Expect::NotAllowed(ps) => Decision::Deny(DenyReason::NoAllowPolicyMatched {
                allow_policies: ps.iter().map(|p| p.to_string()).collect(),
            }),
        }
    }
}

struct Case {
    name: &'static str,
    policies: Vec<Policy>,
    /// Keys the destination workload lists (its selector policies).
    selected: &'static [&'static str],
    identity: Option<Identity>,
    source: &'static str,
    destination: &'static str,
    expect: Expect,
}

/// A case from the standard client (10.77.1.10) to the server's 8080.
fn case(
    name: &'static str,
    policies: Vec<Policy>,
    identity: Option<Identity>,
    expect: Expect,
) -> Case {
    Case {
        name,
        policies,
        selected: &[],
        identity,
        source: "10.77.1.10",
        destination: "10.77.2.10:8080",
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use PolicyAction::{Allow, Deny};
    use PolicyScope::{Global, Namespace, WorkloadSelector};
    let principals = |v: Vec<StringMatch>| PolicyMatch {
        principals: v,
        ..m()
    };
    let not_principals = |v: Vec<StringMatch>| PolicyMatch {
        not_principals: v,
        ..m()
    };
    let namespaces = |v: Vec<StringMatch>| PolicyMatch {
        namespaces: v,
        ..m()
    };
    let not_namespaces = |v: Vec<StringMatch>| PolicyMatch {
        not_namespaces: v,
        ..m()
    };
    let accounts = |v: Vec<ServiceAccountMatch>| PolicyMatch {
        service_accounts: v,
        ..m()
    };
    let not_accounts = |v: Vec<ServiceAccountMatch>| PolicyMatch {
        not_service_accounts: v,
        ..m()
    };
    let source_ips = |v: &[&str]| PolicyMatch {
        source_ips: v.iter().map(|n| net(n)).collect(),
        ..m()
    };
    let not_source_ips = |v: &[&str]| PolicyMatch {
        not_source_ips: v.iter().map(|n| net(n)).collect(),
        ..m()
    };
    let destination_ips = |v: &[&str]| PolicyMatch {
        destination_ips: v.iter().map(|n| net(n)).collect(),
        ..m()
    };
    let not_destination_ips = |v: &[&str]| PolicyMatch {
        not_destination_ips: v.iter().map(|n| net(n)).collect(),
        ..m()
    };
    let ports = |v: &[u16]| PolicyMatch {
        destination_ports: v.to_vec(),
        ..m()
    };
    let not_ports = |v: &[u16]| PolicyMatch {
        not_destination_ports: v.to_vec(),
        ..m()
    };
    const CLIENT: &str = "cluster.local/ns/default/sa/client";
    const NA: &[&str] = &["default/allow"];

    let mut cases = vec![
        // No policy at all.
        case("no policies, mTLS", vec![], client(), Open),
        case("no policies, plaintext", vec![], PLAINTEXT, Open),
        // Principals: exact / prefix / suffix / presence, compared without spiffe://.
        case(
            "principal exact matches",
            vec![allow(principals(vec![exact(CLIENT)]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal exact, another identity",
            vec![allow(principals(vec![exact(CLIENT)]))],
            intruder(),
            NotAllowed(NA),
        ),
        case(
            "principal value with spiffe:// never matches",
            vec![allow(principals(vec![exact(
                "spiffe://cluster.local/ns/default/sa/client",
            )]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "principal prefix matches what follows the scheme",
            vec![allow(principals(vec![prefix("cluster.local/ns/default/")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal prefix spiffe:// never matches",
            vec![allow(principals(vec![prefix("spiffe://")]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "principal suffix matches",
            vec![allow(principals(vec![suffix("/sa/client")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal suffix differs",
            vec![allow(principals(vec![suffix("/sa/server")]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "principal presence, mTLS",
            vec![allow(principals(vec![StringMatch::Presence]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal presence, plaintext",
            vec![allow(principals(vec![StringMatch::Presence]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "principal exact, plaintext",
            vec![allow(principals(vec![exact(CLIENT)]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "principal values are ORed",
            vec![allow(principals(vec![
                exact("x/ns/y/sa/z"),
                suffix("/sa/client"),
            ]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal exact, other trust domain",
            vec![allow(principals(vec![exact(CLIENT)]))],
            foreign(),
            NotAllowed(NA),
        ),
        case(
            "not_principals excludes the client",
            vec![allow(not_principals(vec![exact(CLIENT)]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "not_principals admits another identity",
            vec![allow(not_principals(vec![exact(CLIENT)]))],
            intruder(),
            AllowedBy("default/allow"),
        ),
        case(
            "not_principals exact, plaintext holds",
            vec![allow(not_principals(vec![exact(CLIENT)]))],
            PLAINTEXT,
            AllowedBy("default/allow"),
        ),
        case(
            "DENY not_principals presence denies plaintext",
            vec![deny(not_principals(vec![StringMatch::Presence]))],
            PLAINTEXT,
            DeniedBy("default/deny"),
        ),
        case(
            "DENY not_principals presence spares mTLS",
            vec![deny(not_principals(vec![StringMatch::Presence]))],
            client(),
            Open,
        ),
        // Namespaces.
        case(
            "namespace exact matches",
            vec![allow(namespaces(vec![exact("default")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "namespace exact, other namespace",
            vec![allow(namespaces(vec![exact("default")]))],
            intruder(),
            NotAllowed(NA),
        ),
        case(
            "namespace prefix",
            vec![allow(namespaces(vec![prefix("def")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "namespace suffix",
            vec![allow(namespaces(vec![suffix("ult")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "namespace presence, plaintext",
            vec![allow(namespaces(vec![StringMatch::Presence]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "namespace exact empty, plaintext still no match",
            vec![allow(namespaces(vec![exact("")]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "not_namespaces admits the client",
            vec![allow(not_namespaces(vec![exact("other")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "not_namespaces excludes other",
            vec![allow(not_namespaces(vec![exact("other")]))],
            intruder(),
            NotAllowed(NA),
        ),
        case(
            "not_namespaces, plaintext holds",
            vec![allow(not_namespaces(vec![exact("other")]))],
            PLAINTEXT,
            AllowedBy("default/allow"),
        ),
        // Service accounts (namespace and name, any trust domain, as ztunnel).
        case(
            "service account matches",
            vec![allow(accounts(vec![sa("default", "client")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "service account, another one",
            vec![allow(accounts(vec![sa("default", "client")]))],
            intruder(),
            NotAllowed(NA),
        ),
        case(
            "service account ignores the trust domain",
            vec![allow(accounts(vec![sa("default", "client")]))],
            foreign(),
            AllowedBy("default/allow"),
        ),
        case(
            "service account, plaintext",
            vec![allow(accounts(vec![sa("default", "client")]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "service account needs both parts",
            vec![allow(accounts(vec![sa("other", "client")]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "not_service_accounts excludes the client",
            vec![allow(not_accounts(vec![sa("default", "client")]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "not_service_accounts admits another",
            vec![allow(not_accounts(vec![sa("default", "client")]))],
            intruder(),
            AllowedBy("default/allow"),
        ),
        // Source IPs, v4 and v6.
        case(
            "source range v4 contains",
            vec![allow(source_ips(&["10.77.1.0/24"]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "source single address",
            vec![allow(source_ips(&["10.77.1.10/32"]))],
            PLAINTEXT,
            AllowedBy("default/allow"),
        ),
        case(
            "not_source_ips excludes",
            vec![allow(not_source_ips(&["10.77.1.0/24"]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "DENY source range, plaintext",
            vec![deny(source_ips(&["10.0.0.0/8"]))],
            PLAINTEXT,
            DeniedBy("default/deny"),
        ),
        // Destination IPs and ports.
        case(
            "destination ip matches",
            vec![allow(destination_ips(&["10.77.2.10/32"]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "destination ip elsewhere",
            vec![allow(destination_ips(&["10.77.9.0/24"]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "not_destination_ips excludes",
            vec![allow(not_destination_ips(&["10.77.2.0/24"]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "v6 destination range, v4 destination",
            vec![allow(destination_ips(&["fd00:2::/64"]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "destination port matches",
            vec![allow(ports(&[8080]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "destination port differs",
            vec![allow(ports(&[9090]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "destination ports are ORed",
            vec![allow(ports(&[9090, 8080]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "not_destination_ports excludes",
            vec![allow(not_ports(&[8080]))],
            client(),
            NotAllowed(NA),
        ),
        case(
            "not_destination_ports admits others",
            vec![allow(not_ports(&[9090]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "DENY on a port, plaintext",
            vec![deny(ports(&[8080]))],
            PLAINTEXT,
            DeniedBy("default/deny"),
        ),
        // AND within a match, OR across matches, AND across clauses, OR across rules.
        case(
            "fields of a match are ANDed (one fails)",
            vec![allow(PolicyMatch {
                principals: vec![exact(CLIENT)],
                destination_ports: vec![9090],
                ..m()
            })],
            client(),
            NotAllowed(NA),
        ),
        case(
            "fields of a match are ANDed (all hold)",
            vec![allow(PolicyMatch {
                principals: vec![exact(CLIENT)],
                destination_ports: vec![8080],
                ..m()
            })],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "positive and negative in one field",
            vec![allow(PolicyMatch {
                principals: vec![prefix("cluster.local/ns/default/")],
                not_principals: vec![exact(CLIENT)],
                ..m()
            })],
            client(),
            NotAllowed(NA),
        ),
        case(
            "positive and negative in one field, other sa",
            vec![allow(PolicyMatch {
                principals: vec![prefix("cluster.local/ns/default/")],
                not_principals: vec![exact(CLIENT)],
                ..m()
            })],
            client2(),
            AllowedBy("default/allow"),
        ),
        case(
            "matches of a clause are ORed",
            vec![policy(
                "default/allow",
                Namespace,
                Allow,
                vec![vec![vec![
                    principals(vec![exact("x/ns/y/sa/z")]),
                    ports(&[8080]),
                ]]],
            )],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "clauses of a rule are ANDed (one fails)",
            vec![policy(
                "default/allow",
                Namespace,
                Allow,
                vec![vec![
                    vec![principals(vec![exact(CLIENT)])],
                    vec![ports(&[9090])],
                ]],
            )],
            client(),
            NotAllowed(NA),
        ),
        case(
            "clauses of a rule are ANDed (all hold)",
            vec![policy(
                "default/allow",
                Namespace,
                Allow,
                vec![vec![
                    vec![principals(vec![exact(CLIENT)])],
                    vec![ports(&[8080])],
                ]],
            )],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "rules are ORed",
            vec![policy(
                "default/allow",
                Namespace,
                Allow,
                vec![vec![vec![ports(&[9090])]], vec![vec![ports(&[8080])]]],
            )],
            client(),
            AllowedBy("default/allow"),
        ),
        // The empty cases.
        case(
            "ALLOW without rules allows nothing",
            vec![policy("default/allow", Namespace, Allow, vec![])],
            client(),
            NotAllowed(NA),
        ),
        case(
            "DENY without rules denies nothing",
            vec![policy("default/deny", Namespace, Deny, vec![])],
            client(),
            Open,
        ),
        case(
            "a rule without clauses matches everything (ALLOW)",
            vec![everything("default/allow", Namespace, Allow)],
            PLAINTEXT,
            AllowedBy("default/allow"),
        ),
        case(
            "a rule without clauses matches everything (DENY)",
            vec![everything("default/deny", Namespace, Deny)],
            client(),
            DeniedBy("default/deny"),
        ),
        case(
            "a clause without matches is satisfied",
            vec![policy("default/deny", Namespace, Deny, vec![vec![vec![]]])],
            client(),
            DeniedBy("default/deny"),
        ),
        case(
            "a match without fields satisfies nothing",
            vec![policy(
                "default/deny",
                Namespace,
                Deny,
                vec![vec![vec![m()]]],
            )],
            client(),
            Open,
        ),
        // Scope.
        case(
            "a namespace policy of another namespace does not apply",
            vec![everything("other/deny-all", Namespace, Deny)],
            client(),
            Open,
        ),
        case(
            "a namespace policy of the workload's namespace applies",
            vec![everything("default/deny-all", Namespace, Deny)],
            client(),
            DeniedBy("default/deny-all"),
        ),
        case(
            "a global policy applies everywhere",
            vec![everything("istio-system/deny-all", Global, Deny)],
            client(),
            DeniedBy("istio-system/deny-all"),
        ),
        case(
            "a selector policy the workload does not list does not apply",
            vec![everything("default/deny-selected", WorkloadSelector, Deny)],
            client(),
            Open,
        ),
        Case {
            selected: &["default/deny-selected"],
            ..case(
                "a selector policy the workload lists applies",
                vec![everything("default/deny-selected", WorkloadSelector, Deny)],
                client(),
                DeniedBy("default/deny-selected"),
            )
        },
        Case {
            selected: &["other/deny-all"],
            ..case(
                "a listed namespace policy of another namespace does not apply",
                vec![everything("other/deny-all", Namespace, Deny)],
                client(),
                Open,
            )
        },
        Case {
            selected: &["default/deny-all"],
            ..case(
                "a listed namespace policy counts once",
                vec![everything("default/deny-all", Namespace, Deny)],
                client(),
                DeniedBy("default/deny-all"),
            )
        },
        // Order.
        case(
            "DENY wins over a matching ALLOW",
            vec![
                everything("default/allow", Namespace, Allow),
                everything("default/deny", Namespace, Deny),
            ],
            client(),
            DeniedBy("default/deny"),
        ),
        Case {
            selected: &["default/allow-selected"],
            ..case(
                "any matching ALLOW allows",
                vec![
                    allow(ports(&[9090])),
                    policy(
                        "default/allow-selected",
                        WorkloadSelector,
                        Allow,
                        vec![vec![vec![principals(vec![exact(CLIENT)])]]],
                    ),
                ],
                client(),
                AllowedBy("default/allow-selected"),
            )
        },
        Case {
            selected: &["default/allow-selected"],
            ..case(
                "no ALLOW matches: every ALLOW is named",
                vec![
                    policy(
                        "istio-system/allow-probes",
                        Global,
                        Allow,
                        vec![vec![vec![source_ips(&["169.254.7.127/32"])]]],
                    ),
                    allow(ports(&[9090])),
                    policy(
                        "default/allow-selected",
                        WorkloadSelector,
                        Allow,
                        vec![vec![vec![ports(&[7070])]]],
                    ),
                ],
                PLAINTEXT,
                NotAllowed(&[
                    "istio-system/allow-probes",
                    "default/allow",
                    "default/allow-selected",
                ]),
            )
        },
        case(
            "a non-matching DENY leaves the ALLOWs to decide",
            vec![deny(ports(&[9090])), allow(ports(&[8080]))],
            client(),
            AllowedBy("default/allow"),
        ),
        // Dry run.
        case(
            "a dry-run DENY is not enforced",
            vec![dry(everything("default/deny", Namespace, Deny))],
            client(),
            Open,
        ),
        case(
            "a dry-run ALLOW does not close the workload",
            vec![dry(allow(ports(&[9090])))],
            client(),
            Open,
        ),
        case(
            "a dry-run ALLOW is not counted among the ALLOWs",
            vec![
                dry(policy("default/allow-dry", Namespace, Allow, vec![vec![]])),
                allow(ports(&[9090])),
            ],
            client(),
            NotAllowed(NA),
        ),
        case(
            "a dry-run ALLOW cannot allow",
            vec![
                dry(policy("default/allow-dry", Namespace, Allow, vec![vec![]])),
                allow(ports(&[9090])),
            ],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        // Unknown policies.
        Case {
            selected: &["default/in-flight"],
            ..case(
                "a listed policy not in the store is skipped",
                vec![],
                client(),
                Open,
            )
        },
        Case {
            selected: &["default/in-flight", "default/deny-selected"],
            ..case(
                "an unknown policy does not hide the others",
                vec![everything("default/deny-selected", WorkloadSelector, Deny)],
                client(),
                DeniedBy("default/deny-selected"),
            )
        },
        // STRICT mTLS, as istiod converts PeerAuthentication.
        case(
            "STRICT refuses plaintext",
            vec![strict("istio-system/istio_converted_static_strict", Global)],
            PLAINTEXT,
            DeniedBy("istio-system/istio_converted_static_strict"),
        ),
        case(
            "STRICT admits mTLS",
            vec![strict("istio-system/istio_converted_static_strict", Global)],
            client(),
            Open,
        ),
        case(
            "namespace STRICT refuses plaintext",
            vec![strict(
                "default/converted_peer_authentication_default",
                Namespace,
            )],
            PLAINTEXT,
            DeniedBy("default/converted_peer_authentication_default"),
        ),
        case(
            "STRICT plus an ALLOW by principal",
            vec![
                strict("istio-system/istio_converted_static_strict", Global),
                allow(principals(vec![exact(CLIENT)])),
            ],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "PERMISSIVE (no STRICT policy) admits plaintext",
            vec![allow(not_principals(vec![exact("x/ns/y/sa/z")]))],
            PLAINTEXT,
            AllowedBy("default/allow"),
        ),
    ];
    // Empty-string values: plaintext has no principal at all, not an empty one.
    cases.extend([
        case(
            "principal prefix \"\" matches any identity",
            vec![allow(principals(vec![prefix("")]))],
            client(),
            AllowedBy("default/allow"),
        ),
        case(
            "principal prefix \"\" never matches plaintext",
            vec![allow(principals(vec![prefix("")]))],
            PLAINTEXT,
            NotAllowed(NA),
        ),
        case(
            "not_principals prefix \"\" holds for plaintext",
            vec![deny(not_principals(vec![prefix("")]))],
            PLAINTEXT,
            DeniedBy("default/deny"),
        ),
        case(
            "not_namespaces exact \"\" holds for plaintext",
            vec![deny(not_namespaces(vec![exact("")]))],
            PLAINTEXT,
            DeniedBy("default/deny"),
        ),
    ]);
    // IPv6 connections.
    cases.extend([
        Case {
            source: "fd00:1::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "v6 source range contains",
                vec![allow(source_ips(&["fd00:1::/64"]))],
                client(),
                AllowedBy("default/allow"),
            )
        },
        Case {
            source: "fd00:9::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "v6 source range excludes",
                vec![allow(source_ips(&["fd00:1::/64"]))],
                client(),
                NotAllowed(NA),
            )
        },
        Case {
            source: "fd00:1::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "v4 range, v6 source",
                vec![allow(source_ips(&["10.0.0.0/8"]))],
                client(),
                NotAllowed(NA),
            )
        },
        Case {
            source: "fd00:9::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "not_source_ips v6 admits outside",
                vec![allow(not_source_ips(&["fd00:1::/64"]))],
                client(),
                AllowedBy("default/allow"),
            )
        },
        Case {
            source: "fd00:1::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "v6 destination range",
                vec![allow(destination_ips(&["fd00:2::/64"]))],
                client(),
                AllowedBy("default/allow"),
            )
        },
        Case {
            source: "fd00:1::5",
            destination: "[fd00:2::10]:8080",
            ..case(
                "v6 DENY on a single address",
                vec![deny(destination_ips(&["fd00:2::10/128"]))],
                PLAINTEXT,
                DeniedBy("default/deny"),
            )
        },
    ]);
    cases
}

fn store_for(case: &Case) -> (Store, Arc<Workload>) {
    let mut store = Store::default();
    let mut server = workload("server", SERVER_IP);
    server.workload_ips.push(SERVER_IP6.parse().unwrap());
    server.authorization_policies = case.selected.iter().map(|k| k.to_string()).collect();
    store.insert_workload(server.clone());
    for p in &case.policies {
        store.insert_policy(p.clone());
    }
    (store, Arc::new(server))
}

fn connection_for(case: &Case, destination: Arc<Workload>) -> ConnectionInfo {
    ConnectionInfo {
        source_identity: case.identity.clone(),
        source_ip: case.source.parse().unwrap(),
        destination,
        destination_addr: case.destination.parse().unwrap(),
    }
}

#[test]
fn decision_table() {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let (store, server) = store_for(case);
        let info = connection_for(case, server);
        let want = case.expect.decision();
        let got = authorize(&info, &store);
        if got != want {
            failures.push(format!("{}: want {want}, got {got}", case.name));
            continue;
        }
        let explained = explain(&info, &store);
        let reason = match &got {
            Decision::Allow(r) => r.to_string(),
            Decision::Deny(r) => r.to_string(),
        };
        if explained.reason != reason
            || explained.decision
                != if matches!(got, Decision::Allow(_)) {
                    "allow"
                } else {
                    "deny"
                }
        {
            failures.push(format!(
                "{}: explain says {} ({}), authorize {got}",
                case.name, explained.decision, explained.reason
            ));
        }
        // The traced per-policy outcomes must support the decision on their own: the
        // deciding policy matched, and a "no ALLOW matched" denial has no enforced ALLOW
        // that the trace says matched.
        let enforced = |action: &'static str| {
            explained
                .policies
                .iter()
                .filter(move |p| !p.dry_run && p.action == action)
        };
        let decided: Vec<_> = explained.policies.iter().filter(|p| p.decided).collect();
        let consistent = match &got {
            Decision::Deny(DenyReason::DenyPolicy { policy }) => {
                matches!(&decided[..], [p] if &p.policy == policy && p.matched && p.action == "DENY")
            }
            Decision::Allow(AllowReason::AllowPolicy { policy }) => {
                matches!(&decided[..], [p] if &p.policy == policy && p.matched && p.action == "ALLOW")
                    && !enforced("DENY").any(|p| p.matched)
            }
            Decision::Deny(DenyReason::NoAllowPolicyMatched { .. }) => {
                decided.is_empty()
                    && !enforced("DENY").any(|p| p.matched)
                    && !enforced("ALLOW").any(|p| p.matched)
                    && enforced("ALLOW").count() > 0
            }
            Decision::Allow(AllowReason::NoAllowPolicies) => {
                decided.is_empty()
                    && !enforced("DENY").any(|p| p.matched)
                    && enforced("ALLOW").count() == 0
            }
        };
        if !consistent {
            failures.push(format!(
                "{}: the explanation's per-policy trace does not support {got}: {:?}",
                case.name,
                explained
                    .policies
                    .iter()
                    .map(|p| (&p.policy, p.action, p.matched, p.decided))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
