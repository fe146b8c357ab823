//! The policy sets both policy benches run against, written as the `policies:` section of a
//! local mesh file (`LOCAL_XDS_PATH`), so the decision micro-bench (`bench/policy_decision.rs`,
//! which loads it with the daemon's own loader) and the connection-rate bench
//! (`nodetunnel-bench policy`, which hands it to a real tunnel) measure the same policies.
//! Std only: the testbed includes this file too and does not depend on the daemon crate.
//!
//! The shapes are what istiod writes for typical L4 AuthorizationPolicies: `from` principals
//! (exact and prefix), namespaces with a `notPrincipals` exception, ipBlocks (v4 and v6 CIDRs
//! with an exception), service accounts, a suffix principal with destination ports and IPs.
//! None of the generated "other" policies matches the bench's client (`default/client`, from
//! 10.77.1.0/24): each rule has a `from` clause naming other teams or other networks, so a
//! DENY one never denies and an ALLOW one never allows. Their scopes are mixed a third each:
//! selected by the workload (listed in its `authorizationPolicies`), its namespace, global
//! (the root namespace `istio-system`).

use std::fmt::Write as _;

/// ALLOW or DENY, as the local file spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    fn yaml(self) -> &'static str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Who the policies are about: the destination workload's namespace, and the client that
/// the matching ALLOW policy (if any) admits.
pub struct Target<'a> {
    /// Namespace of the destination workload (its NAMESPACE-scope and selector policies live there).
    pub namespace: &'a str,
    /// The client's principal as istiod writes it, without `spiffe://`.
    pub client_principal: &'a str,
    /// A CIDR holding the client's source address (matches plaintext clients too).
    pub client_cidr: &'a str,
    /// The destination port the matching ALLOW policy names.
    pub port: u16,
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// How many policies apply to the destination workload, in all.
    pub count: usize,
    /// The action of the non-matching policies.
    pub others: Action,
    /// Whether the last policy evaluated is an ALLOW that matches the client (the other
    /// `count - 1` do not match); otherwise none of the `count` matches.
    pub last_allows_client: bool,
}

/// The generated policies.
pub struct PolicySet {
    /// `policies:` and its entries (a top-level section of a mesh file), or `policies: []`.
    pub yaml: String,
    /// Keys (`namespace/name`) the destination workload must list in `authorizationPolicies`,
    /// in order: the WORKLOAD_SELECTOR ones (the matching ALLOW, if any, last).
    pub selected: Vec<String>,
    /// The name of the matching ALLOW policy (`namespace/name`), if there is one.
    pub allowing: Option<String>,
}

/// The root namespace: istiod gives its policies the GLOBAL scope.
const ROOT_NAMESPACE: &str = "istio-system";
const TRUST_DOMAIN: &str = "cluster.local";

/// Generates `spec` for `target`. Selector policies are visited after the global and namespace
/// ones, in the order the workload lists them, so the matching ALLOW (listed last) is the last
/// policy evaluated.
pub fn generate(spec: Spec, target: &Target<'_>) -> PolicySet {
    let others = spec.count - usize::from(spec.last_allows_client && spec.count > 0);
    let mut set = PolicySet {
        yaml: String::from("policies:\n"),
        selected: Vec::new(),
        allowing: None,
    };
    for i in 0..others {
        let (scope, namespace) = match i % 3 {
            0 => ("WorkloadSelector", target.namespace),
            1 => ("Namespace", target.namespace),
            _ => ("Global", ROOT_NAMESPACE),
        };
        let name = format!(
            "{}-{}-{i:04}",
            spec.others.prefix(),
            SHAPES[i % SHAPES.len()].0
        );
        if scope == "WorkloadSelector" {
            set.selected.push(format!("{namespace}/{name}"));
        }
        header(&mut set.yaml, &name, namespace, scope, spec.others);
        (SHAPES[i % SHAPES.len()].1)(&mut set.yaml, i);
    }
    if others < spec.count {
        let name = "allow-client";
        header(
            &mut set.yaml,
            name,
            target.namespace,
            "WorkloadSelector",
            Action::Allow,
        );
        let _ = writeln!(
            set.yaml,
            "  - - - principals: [!Exact \"{}\"]\n      - sourceIps: [\"{}\"]\n    - - destinationPorts: [{}]",
            target.client_principal, target.client_cidr, target.port
        );
        let key = format!("{}/{name}", target.namespace);
        set.selected.push(key.clone());
        set.allowing = Some(key);
    }
    if spec.count == 0 {
        set.yaml = "policies: []\n".into();
    }
    set
}

fn header(y: &mut String, name: &str, namespace: &str, scope: &str, action: Action) {
    let _ = writeln!(
        y,
        "- name: {name}\n  namespace: {namespace}\n  scope: {scope}\n  action: {}\n  rules:",
        action.yaml()
    );
}

/// The rule shapes, by name; each writes the `rules` entries of policy `i` (team `team-<i>`).
type Shape = fn(&mut String, usize);
const SHAPES: [(&str, Shape); 4] = [
    ("principals", principals),
    ("namespaces", namespaces),
    ("ipblocks", ip_blocks),
    ("accounts", accounts),
];

/// `from: principals [team-i/sa/app, prefix team-i-ops/]`, `to: ports [8080, 9090]`.
fn principals(y: &mut String, i: usize) {
    let _ = writeln!(
        y,
        "  - - - principals: [!Exact \"{TRUST_DOMAIN}/ns/team-{i}/sa/app\", !Prefix \"{TRUST_DOMAIN}/ns/team-{i}-ops/\"]\n    - - destinationPorts: [8080, 9090]"
    );
}

/// `from: namespaces [team-i, prefix team-i-], notPrincipals [team-i/sa/admin]`.
fn namespaces(y: &mut String, i: usize) {
    let _ = writeln!(
        y,
        "  - - - namespaces: [!Exact \"team-{i}\", !Prefix \"team-{i}-\"]\n        notPrincipals: [!Exact \"{TRUST_DOMAIN}/ns/team-{i}/sa/admin\"]"
    );
}

/// `from: ipBlocks [192.168.x.0/24, fd00:x::/64], notIpBlocks [192.168.x.1/32]`,
/// `to: ports [80, 443]`.
fn ip_blocks(y: &mut String, i: usize) {
    let x = i % 256;
    let _ = writeln!(
        y,
        "  - - - sourceIps: [\"192.168.{x}.0/24\", \"fd00:{i:x}::/64\"]\n        notSourceIps: [\"192.168.{x}.1/32\"]\n    - - destinationPorts: [80, 443]"
    );
}

/// Two rules: `from: serviceAccounts [team-i/batch]`; `from: principals [suffix
/// /sa/team-i-batch]`, `to: ports [8080] on 10.200.x.0/24`.
fn accounts(y: &mut String, i: usize) {
    let x = i % 256;
    let _ = writeln!(
        y,
        "  - - - serviceAccounts: [{{namespace: \"team-{i}\", serviceAccount: batch}}]\n  - - - principals: [!Suffix \"/sa/team-{i}-batch\"]\n    - - destinationPorts: [8080]\n        destinationIps: [\"10.200.{x}.0/24\"]"
    );
}
