//! The `policies:` entries of a local file, in the shape ztunnel's local config accepts (the
//! serde form of its `rbac::Authorization`): camelCase fields, `scope` one of `Global`,
//! `Namespace`, `WorkloadSelector`, `action` one of `Allow`, `Deny`, `dryRun`, and `rules`
//! nested as rules → clauses → matches (a list of lists of lists). A string match is written
//! as a YAML tag, as ztunnel's loader reads it: `!Exact v`, `!Prefix v`, `!Suffix v`,
//! `!Presence []`; IP ranges are CIDR strings. Principals are written without `spiffe://`.
//!
//! Also accepted, for people who write the proto's JSON form (ztunnel rejects these): a one-key
//! map (`{Exact: v}`, `{exact: v}`), the proto enum names (`GLOBAL`, `DENY`, ...) and a bare IP
//! (a single-address range).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::Deserialize;

use crate::state::types::{
    Policy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, ServiceAccountMatch,
    StringMatch,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalPolicy {
    name: String,
    namespace: String,
    // Required, as in ztunnel: a missing scope silently meaning "the whole mesh" would be a
    // dangerous default for a hand-written file.
    scope: Scope,
    action: Action,
    #[serde(default)]
    rules: Vec<Vec<Vec<LocalMatch>>>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
enum Scope {
    #[serde(alias = "GLOBAL")]
    Global,
    #[serde(alias = "NAMESPACE")]
    Namespace,
    #[serde(alias = "WORKLOAD_SELECTOR")]
    WorkloadSelector,
}

#[derive(Debug, Deserialize)]
enum Action {
    #[serde(alias = "ALLOW")]
    Allow,
    #[serde(alias = "DENY")]
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalMatch {
    #[serde(default)]
    namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    not_service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    principals: Vec<LocalStringMatch>,
    #[serde(default)]
    not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    source_ips: Vec<Cidr>,
    #[serde(default)]
    not_source_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ips: Vec<Cidr>,
    #[serde(default)]
    not_destination_ips: Vec<Cidr>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
}

/// One string match: a one-key map (`{Exact: v}`, ztunnel's form) or a YAML tag (`!Exact v`).
#[derive(Debug)]
enum LocalStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

const STRING_MATCH_KINDS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

impl<'de> Deserialize<'de> for LocalStringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringMatchVisitor)
    }
}

struct StringMatchVisitor;

/// Which kind of string match a key names (ztunnel's variant names, or the proto's field names).
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Presence,
}

impl Kind {
    fn parse<E: de::Error>(key: &str) -> Result<Kind, E> {
        match key {
            "Exact" | "exact" => Ok(Kind::Exact),
            "Prefix" | "prefix" => Ok(Kind::Prefix),
            "Suffix" | "suffix" => Ok(Kind::Suffix),
            "Presence" | "presence" => Ok(Kind::Presence),
            other => Err(de::Error::unknown_variant(other, STRING_MATCH_KINDS)),
        }
    }
}

impl<'de> Visitor<'de> for StringMatchVisitor {
    type Value = LocalStringMatch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string match: one of {Exact: v}, {Prefix: v}, {Suffix: v}, {Presence: []}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LocalStringMatch, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let found = match Kind::parse(&key)? {
            Kind::Exact => LocalStringMatch::Exact(map.next_value()?),
            Kind::Prefix => LocalStringMatch::Prefix(map.next_value()?),
            Kind::Suffix => LocalStringMatch::Suffix(map.next_value()?),
            Kind::Presence => {
                map.next_value::<Empty>()?;
                LocalStringMatch::Presence
            }
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(2, &self));
        }
        Ok(found)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<LocalStringMatch, A::Error> {
        let (key, value) = data.variant::<String>()?;
        Ok(match Kind::parse(&key)? {
            Kind::Exact => LocalStringMatch::Exact(value.newtype_variant()?),
            Kind::Prefix => LocalStringMatch::Prefix(value.newtype_variant()?),
            Kind::Suffix => LocalStringMatch::Suffix(value.newtype_variant()?),
            Kind::Presence => {
                value.newtype_variant::<Empty>()?;
                LocalStringMatch::Presence
            }
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalServiceAccount {
    namespace: String,
    service_account: String,
}

/// `Presence`'s value: ztunnel writes `[]`; `null` and `{}` mean the same. Anything else is
/// an error, since a value there suggests the author meant another kind of match.
#[derive(Debug)]
struct Empty;

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EmptyVisitor)
    }
}

struct EmptyVisitor;

impl<'de> Visitor<'de> for EmptyVisitor {
    type Value = Empty;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an empty value ([], {} or null)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Empty, E> {
        Ok(Empty)
    }

    fn visit_none<E: de::Error>(self) -> Result<Empty, E> {
        Ok(Empty)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Empty, A::Error> {
        match seq.next_element::<de::IgnoredAny>()? {
            None => Ok(Empty),
            Some(_) => Err(de::Error::invalid_length(1, &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Empty, A::Error> {
        match map.next_key::<de::IgnoredAny>()? {
            None => Ok(Empty),
            Some(_) => Err(de::Error::invalid_length(1, &self)),
        }
    }
}

/// An IP range written `10.0.0.0/8`, or a bare IP meaning just that address.
#[derive(Debug)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net));
        }
        text.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| {
                de::Error::custom(format!(
                    "{text:?} is not an IP range (<ip>/<prefix length>) or an IP address"
                ))
            })
    }
}

impl LocalPolicy {
    /// `namespace/name`, as the entry is named in messages (and keyed in the store).
    pub(super) fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what serde cannot and builds the policy; the error says what is wrong with the
    /// entry (the caller names the entry).
    pub(super) fn into_policy(self) -> Result<Policy, String> {
        for (field, value) in [("namespace", &self.namespace), ("name", &self.name)] {
            if value.is_empty() {
                return Err(format!("`{field}` must not be empty"));
            }
            if value.contains('/') {
                return Err(format!(
                    "`{field}` {value:?} contains '/', which makes the policy key ambiguous"
                ));
            }
        }
        let rules = self
            .rules
            .into_iter()
            .enumerate()
            .map(|(r, clauses)| rule(r, clauses))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                Scope::Global => PolicyScope::Global,
                Scope::Namespace => PolicyScope::Namespace,
                Scope::WorkloadSelector => PolicyScope::WorkloadSelector,
            },
            action: match self.action {
                Action::Allow => PolicyAction::Allow,
                Action::Deny => PolicyAction::Deny,
            },
            rules,
            dry_run: self.dry_run,
        })
    }
}

fn rule(r: usize, clauses: Vec<Vec<LocalMatch>>) -> Result<PolicyRule, String> {
    let clauses = clauses
        .into_iter()
        .enumerate()
        .map(|(c, matches)| {
            let matches = matches
                .into_iter()
                .enumerate()
                .map(|(m, local)| {
                    local
                        .into_match()
                        .map_err(|e| format!("rules[{r}][{c}][{m}].{e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PolicyClause { matches })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(PolicyRule { clauses })
}

impl LocalMatch {
    fn into_match(self) -> Result<PolicyMatch, String> {
        for (field, ports) in [
            ("destinationPorts", &self.destination_ports),
            ("notDestinationPorts", &self.not_destination_ports),
        ] {
            if ports.contains(&0) {
                return Err(format!("{field}: port 0 is not a valid port"));
            }
        }
        let strings = |v: Vec<LocalStringMatch>| v.into_iter().map(string_match).collect();
        let accounts = |v: Vec<LocalServiceAccount>| {
            v.into_iter()
                .map(|a| ServiceAccountMatch {
                    namespace: a.namespace,
                    service_account: a.service_account,
                })
                .collect()
        };
        let nets = |v: Vec<Cidr>| v.into_iter().map(|c| c.0).collect();
        Ok(PolicyMatch {
            namespaces: strings(self.namespaces),
            not_namespaces: strings(self.not_namespaces),
            service_accounts: accounts(self.service_accounts),
            not_service_accounts: accounts(self.not_service_accounts),
            principals: strings(self.principals),
            not_principals: strings(self.not_principals),
            source_ips: nets(self.source_ips),
            not_source_ips: nets(self.not_source_ips),
            destination_ips: nets(self.destination_ips),
            not_destination_ips: nets(self.not_destination_ips),
            destination_ports: self.destination_ports,
            not_destination_ports: self.not_destination_ports,
        })
    }
}

fn string_match(m: LocalStringMatch) -> StringMatch {
    match m {
        LocalStringMatch::Exact(s) => StringMatch::Exact(s),
        LocalStringMatch::Prefix(s) => StringMatch::Prefix(s),
        LocalStringMatch::Suffix(s) => StringMatch::Suffix(s),
        LocalStringMatch::Presence => StringMatch::Presence,
    }
}
