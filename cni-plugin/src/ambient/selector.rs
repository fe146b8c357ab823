//! Istio's `enablement_selectors`: a list of `{podSelector, namespaceSelector}` pairs, each a
//! Kubernetes label selector (`matchLabels` + `matchExpressions`). A pod is selected when ANY
//! pair matches, and a pair matches when BOTH its selectors match (istio/istio
//! `cni/pkg/util/enablement_selector.go`). An empty (or absent) selector matches everything,
//! as Istio compiles it to `labels.Everything()`.
//!
//! Operators follow Kubernetes' `LabelSelectorAsSelector`: `In` (label present, value listed),
//! `NotIn` (label absent, or value not listed), `Exists`, `DoesNotExist`; `In`/`NotIn` need at
//! least one value, `Exists`/`DoesNotExist` none; keys and values must be valid label keys and
//! values. Anything else is rejected when the rules are built (Istio's agent refuses to start),
//! so a typo in the config fails loudly instead of silently selecting nothing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde::{Deserialize, Serialize};

use super::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE};

/// One entry of `enablement_selectors`, with Istio's JSON field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnablementSelector {
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub namespace_selector: LabelSelector,
}

/// Why a selector from the config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("enablement_selectors[{index}]: not a selector object: {source}")]
    Decode {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("enablement selectors YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("enablement_selectors[{index}].{which}: key {key:?}: unknown operator {operator:?} (expected In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator {
        index: usize,
        which: &'static str,
        key: String,
        operator: String,
    },
    #[error("enablement_selectors[{index}].{which}: key {key:?}: operator {operator} needs at least one value")]
    MissingValues {
        index: usize,
        which: &'static str,
        key: String,
        operator: &'static str,
    },
    #[error(
        "enablement_selectors[{index}].{which}: key {key:?}: operator {operator} takes no values"
    )]
    UnexpectedValues {
        index: usize,
        which: &'static str,
        key: String,
        operator: &'static str,
    },
    #[error("enablement_selectors[{index}].{which}: empty label key")]
    EmptyKey { index: usize, which: &'static str },
    #[error("enablement_selectors[{index}].{which}: label key {key:?}: {why}")]
    InvalidKey {
        index: usize,
        which: &'static str,
        key: String,
        why: &'static str,
    },
    #[error("enablement_selectors[{index}].{which}: key {key:?}: label value {value:?} is not valid (at most 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric)")]
    InvalidValue {
        index: usize,
        which: &'static str,
        key: String,
        value: String,
    },
}

/// Decodes the config's raw JSON selectors (kept as JSON in `PluginConfig`).
pub fn parse_selectors_json(
    values: &[serde_json::Value],
) -> Result<Vec<EnablementSelector>, SelectorError> {
    values
        .iter()
        .enumerate()
        .map(|(index, v)| {
            serde_json::from_value(v.clone())
                .map_err(|source| SelectorError::Decode { index, source })
        })
        .collect()
}

/// Decodes selectors given as YAML (or JSON) text, the form Istio's agent takes them in from
/// its environment (`AMBIENT_ENABLEMENT_SELECTOR`). Empty text and `null` mean no selectors,
/// as Go's YAML decoder leaves the list empty for both.
pub fn parse_selectors_yaml(text: &str) -> Result<Vec<EnablementSelector>, SelectorError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: Option<Vec<EnablementSelector>> = serde_yaml_ng::from_str(text)?;
    Ok(list.unwrap_or_default())
}

/// The selectors used when none are configured: the label rules of Istio's chart defaults —
/// the pod labelled `ambient`, or the namespace labelled `ambient` with the pod not `none`.
pub fn default_selectors() -> Vec<EnablementSelector> {
    let ambient = BTreeMap::from([(
        DATAPLANE_MODE_LABEL.to_string(),
        DATAPLANE_MODE_AMBIENT.to_string(),
    )]);
    vec![
        EnablementSelector {
            pod_selector: LabelSelector {
                match_labels: Some(ambient.clone()),
                match_expressions: None,
            },
            namespace_selector: LabelSelector::default(),
        },
        EnablementSelector {
            pod_selector: LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: DATAPLANE_MODE_LABEL.to_string(),
                    operator: "NotIn".to_string(),
                    values: Some(vec![DATAPLANE_MODE_NONE.to_string()]),
                }]),
            },
            namespace_selector: LabelSelector {
                match_labels: Some(ambient),
                match_expressions: None,
            },
        },
    ]
}

/// A validated pair of selectors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledPair {
    pod: Compiled,
    namespace: Compiled,
}

impl CompiledPair {
    pub(crate) fn compile(index: usize, s: &EnablementSelector) -> Result<Self, SelectorError> {
        Ok(CompiledPair {
            pod: Compiled::compile(index, "podSelector", &s.pod_selector)?,
            namespace: Compiled::compile(index, "namespaceSelector", &s.namespace_selector)?,
        })
    }

    pub(crate) fn matches(
        &self,
        pod_labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        self.pod.matches(pod_labels) && self.namespace.matches(ns_labels)
    }
}

/// One label selector as a list of requirements, all of which must hold (none = everything).
#[derive(Debug, Clone, PartialEq)]
struct Compiled {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Compiled {
    fn compile(
        index: usize,
        which: &'static str,
        selector: &LabelSelector,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            check_key(index, which, key)?;
            check_value(index, which, key, value)?;
            requirements.push(Requirement::In(key.clone(), vec![value.clone()]));
        }
        for expr in selector.match_expressions.iter().flatten() {
            requirements.push(compile_expression(index, which, expr)?);
        }
        Ok(Compiled { requirements })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

fn compile_expression(
    index: usize,
    which: &'static str,
    expr: &LabelSelectorRequirement,
) -> Result<Requirement, SelectorError> {
    check_key(index, which, &expr.key)?;
    let key = expr.key.clone();
    let values = expr.values.clone().unwrap_or_default();
    for value in &values {
        check_value(index, which, &key, value)?;
    }
    let need_values = |operator: &'static str| {
        if values.is_empty() {
            Err(SelectorError::MissingValues {
                index,
                which,
                key: key.clone(),
                operator,
            })
        } else {
            Ok(())
        }
    };
    let no_values = |operator: &'static str| {
        if values.is_empty() {
            Ok(())
        } else {
            Err(SelectorError::UnexpectedValues {
                index,
                which,
                key: key.clone(),
                operator,
            })
        }
    };
    match expr.operator.as_str() {
        "In" => need_values("In").map(|()| Requirement::In(key.clone(), values.clone())),
        "NotIn" => need_values("NotIn").map(|()| Requirement::NotIn(key.clone(), values.clone())),
        "Exists" => no_values("Exists").map(|()| Requirement::Exists(key.clone())),
        "DoesNotExist" => {
            no_values("DoesNotExist").map(|()| Requirement::DoesNotExist(key.clone()))
        }
        other => Err(SelectorError::UnknownOperator {
            index,
            which,
            key: key.clone(),
            operator: other.to_string(),
        }),
    }
}

/// Kubernetes' label key rule (`IsQualifiedName`): `[prefix/]name`, the prefix a DNS-1123
/// subdomain of at most 253 characters, the name at most 63 characters of alphanumerics, `-`,
/// `_`, `.`, starting and ending alphanumeric. `LabelSelectorAsSelector` refuses other keys.
fn check_key(index: usize, which: &'static str, key: &str) -> Result<(), SelectorError> {
    if key.is_empty() {
        return Err(SelectorError::EmptyKey { index, which });
    }
    let invalid = |why| SelectorError::InvalidKey {
        index,
        which,
        key: key.to_string(),
        why,
    };
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err(invalid("more than one '/'"));
            }
            if prefix.is_empty() || prefix.len() > 253 || !is_dns_subdomain(prefix) {
                return Err(invalid(
                    "the prefix must be a DNS subdomain (lowercase alphanumerics, '-', '.', at most 253 characters)",
                ));
            }
            name
        }
    };
    if name.is_empty() {
        return Err(invalid("the name part is empty"));
    }
    if !is_label_name(name) {
        return Err(invalid(
            "the name part must be at most 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric",
        ));
    }
    Ok(())
}

/// Kubernetes' label value rule (`IsValidLabelValue`): empty, or a valid label name.
fn check_value(
    index: usize,
    which: &'static str,
    key: &str,
    value: &str,
) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            index,
            which,
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// DNS-1123 subdomain: dot-separated labels of lowercase alphanumerics and `-`, each starting
/// and ending alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    })
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}
