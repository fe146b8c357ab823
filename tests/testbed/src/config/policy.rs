//! `policies:` entries of the mesh file: Istio's `istio.security.Authorization`, in the shape
//! ztunnel's local config (and nodetunnel's loader) reads — string matches as YAML tags
//! (`!Exact cluster.local/ns/default/sa/client`).
//!
//! ```text
//! let deny = Policy::deny("default", "deny-client")
//!     .rule([[Match::default().principal(StringMatch::exact("cluster.local/ns/default/sa/client"))]]);
//! cfg.policies.push(deny);
//! ```

use std::fmt::Write as _;

use super::quote;

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Workloads in the policy's namespace.
    Namespace,
    /// Workloads that list the policy (`Workload::authorization_policies`).
    WorkloadSelector,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// One string match of a principal or namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any value at all (the peer has one).
    Presence,
}

impl StringMatch {
    pub fn exact(value: &str) -> StringMatch {
        StringMatch::Exact(value.into())
    }

    fn to_yaml(&self) -> String {
        match self {
            StringMatch::Exact(v) => format!("!Exact {}", quote(v)),
            StringMatch::Prefix(v) => format!("!Prefix {}", quote(v)),
            StringMatch::Suffix(v) => format!("!Suffix {}", quote(v)),
            StringMatch::Presence => "!Presence []".into(),
        }
    }
}

/// One match: every field that is set must hold (each field's values are OR'ed; `not_*`
/// fields must not hold). IP ranges are CIDR strings (`10.77.1.10/32`, `fd00::/8`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// `(namespace, service account)`.
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
    pub source_ips: Vec<String>,
    pub not_source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
    pub not_destination_ips: Vec<String>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    /// Adds a principal (as istiod writes it: without `spiffe://`).
    pub fn principal(mut self, value: StringMatch) -> Match {
        self.principals.push(value);
        self
    }

    pub fn namespace(mut self, value: StringMatch) -> Match {
        self.namespaces.push(value);
        self
    }

    pub fn source_ip(mut self, cidr: &str) -> Match {
        self.source_ips.push(cidr.into());
        self
    }

    pub fn destination_port(mut self, port: u16) -> Match {
        self.destination_ports.push(port);
        self
    }

    /// One YAML flow mapping with the fields that are set (`{}`: none set, which matches
    /// nothing).
    fn to_yaml(&self) -> String {
        let strings = |v: &[StringMatch]| {
            v.iter()
                .map(StringMatch::to_yaml)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let accounts = |v: &[(String, String)]| {
            v.iter()
                .map(|(ns, sa)| {
                    format!(
                        "{{namespace: {}, serviceAccount: {}}}",
                        quote(ns),
                        quote(sa)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cidrs = |v: &[String]| v.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let ports = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let fields = [
            ("principals", strings(&self.principals)),
            ("notPrincipals", strings(&self.not_principals)),
            ("namespaces", strings(&self.namespaces)),
            ("notNamespaces", strings(&self.not_namespaces)),
            ("serviceAccounts", accounts(&self.service_accounts)),
            ("notServiceAccounts", accounts(&self.not_service_accounts)),
            ("sourceIps", cidrs(&self.source_ips)),
            ("notSourceIps", cidrs(&self.not_source_ips)),
            ("destinationIps", cidrs(&self.destination_ips)),
            ("notDestinationIps", cidrs(&self.not_destination_ips)),
            ("destinationPorts", ports(&self.destination_ports)),
            ("notDestinationPorts", ports(&self.not_destination_ports)),
        ];
        let set: Vec<String> = fields
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(key, values)| format!("{key}: [{values}]"))
            .collect();
        format!("{{{}}}", set.join(", "))
    }
}

/// A rule's clauses (AND'ed); each clause is a list of matches (OR'ed).
pub type Rule = Vec<Vec<Match>>;

/// One `policies:` entry. Rules are OR'ed; a policy without rules matches nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    pub rules: Vec<Rule>,
    /// Evaluated and logged, never enforced.
    pub dry_run: bool,
}

impl Policy {
    /// A namespace-scoped DENY policy without rules (add them with [`rule`](Self::rule)).
    pub fn deny(namespace: &str, name: &str) -> Policy {
        Policy::new(namespace, name, PolicyAction::Deny)
    }

    /// A namespace-scoped ALLOW policy without rules.
    pub fn allow(namespace: &str, name: &str) -> Policy {
        Policy::new(namespace, name, PolicyAction::Allow)
    }

    fn new(namespace: &str, name: &str, action: PolicyAction) -> Policy {
        Policy {
            name: name.into(),
            namespace: namespace.into(),
            scope: PolicyScope::Namespace,
            action,
            rules: Vec::new(),
            dry_run: false,
        }
    }

    pub fn scope(mut self, scope: PolicyScope) -> Policy {
        self.scope = scope;
        self
    }

    pub fn dry_run(mut self) -> Policy {
        self.dry_run = true;
        self
    }

    /// Adds a rule: clauses (AND'ed) of matches (OR'ed).
    pub fn rule<C, M>(mut self, clauses: C) -> Policy
    where
        C: IntoIterator<Item = M>,
        M: IntoIterator<Item = Match>,
    {
        self.rules.push(
            clauses
                .into_iter()
                .map(|c| c.into_iter().collect())
                .collect(),
        );
        self
    }

    /// `namespace/name`: how workloads, logs and the xDS resource name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Appends this entry of the `policies:` list to `y`.
    pub(super) fn write_yaml(&self, y: &mut String) {
        let scope = match self.scope {
            PolicyScope::Global => "Global",
            PolicyScope::Namespace => "Namespace",
            PolicyScope::WorkloadSelector => "WorkloadSelector",
        };
        let action = match self.action {
            PolicyAction::Allow => "Allow",
            PolicyAction::Deny => "Deny",
        };
        let _ = writeln!(y, "- name: {}", quote(&self.name));
        let _ = writeln!(y, "  namespace: {}", quote(&self.namespace));
        let _ = writeln!(y, "  scope: {scope}");
        let _ = writeln!(y, "  action: {action}");
        if self.dry_run {
            y.push_str("  dryRun: true\n");
        }
        if self.rules.is_empty() {
            y.push_str("  rules: []\n");
            return;
        }
        y.push_str("  rules:\n");
        for rule in &self.rules {
            if rule.is_empty() {
                y.push_str("  - []\n");
                continue;
            }
            y.push_str("  -\n");
            for clause in rule {
                if clause.is_empty() {
                    y.push_str("    - []\n");
                    continue;
                }
                y.push_str("    -\n");
                for m in clause {
                    let _ = writeln!(y, "      - {}", m.to_yaml());
                }
            }
        }
    }
}
