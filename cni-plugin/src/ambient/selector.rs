//! Istio's `enablement_selectors`: a list of `{podSelector, namespaceSelector}` pairs, each a
//! Kubernetes label selector (`matchLabels` + `matchExpressions`). A pod is selected when ANY
//! pair matches, and a pair matches when BOTH its selectors match (istio/istio
//! `cni/pkg/util/enablement_selector.go`). An empty (or absent) selector matches everything,
//! as Istio compiles it to `labels.Everything()`.
//!
//! Operators follow Kubernetes' `LabelSelectorAsSelector`: `In` (label present, value listed),
//! `NotIn` (label absent, or value not listed), `Exists`, `DoesNotExist`; `In`/`NotIn` need at
//! least one value, `Exists`/`DoesNotExist` none. Anything else is rejected when the rules are
//! built, so a typo in the config fails loudly instead of silently selecting nothing.

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
/// its environment (`AMBIENT_ENABLEMENT_SELECTOR`). Empty text means no selectors.
pub fn parse_selectors_yaml(text: &str) -> Result<Vec<EnablementSelector>, SelectorError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_yaml_ng::from_str(text)?)
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
            if key.is_empty() {
                return Err(SelectorError::EmptyKey { index, which });
            }
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
    if expr.key.is_empty() {
        return Err(SelectorError::EmptyKey { index, which });
    }
    let key = expr.key.clone();
    let values = expr.values.clone().unwrap_or_default();
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
