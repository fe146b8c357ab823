use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn pod(ns: &str, name: &str, pod_labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(pod_labels),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

fn namespace(name: &str, ns_labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(ns_labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

const AMBIENT: (&str, &str) = (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT);
const NONE: (&str, &str) = (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE);

fn defaults() -> EnrollmentRules {
    EnrollmentRules::new(
        vec!["kube-system".into()],
        "istio-system",
        &default_selectors(),
    )
    .unwrap()
}

fn custom(selectors: serde_json::Value) -> Result<EnrollmentRules, SelectorError> {
    let values = selectors.as_array().cloned().unwrap_or_default();
    let parsed = parse_selectors_json(&values)?;
    EnrollmentRules::new(vec![], "istio-system", &parsed)
}

#[test]
fn namespace_label_enrolls() {
    let ns = namespace("app", &[AMBIENT]);
    assert_eq!(
        defaults().decide(&pod("app", "web", &[]), Some(&ns)),
        Decision::Enroll
    );
}

#[test]
fn pod_label_enrolls_without_namespace_label() {
    let ns = namespace("app", &[]);
    let rules = defaults();
    assert_eq!(
        rules.decide(&pod("app", "web", &[AMBIENT]), Some(&ns)),
        Decision::Enroll
    );
    // Also when the namespace object is unknown.
    assert_eq!(
        rules.decide(&pod("app", "web", &[AMBIENT]), None),
        Decision::Enroll
    );
}

#[test]
fn unlabelled_is_not_selected() {
    let ns = namespace("app", &[("other", "x")]);
    assert_eq!(
        defaults().decide(&pod("app", "web", &[]), Some(&ns)),
        Decision::Skip(SkipReason::NotSelected)
    );
    assert_eq!(
        defaults().decide(&pod("app", "web", &[]), None),
        Decision::Skip(SkipReason::NotSelected)
    );
}

#[test]
fn pod_none_opts_out_of_namespace_label() {
    let ns = namespace("app", &[AMBIENT]);
    assert_eq!(
        defaults().decide(&pod("app", "web", &[NONE]), Some(&ns)),
        Decision::Skip(SkipReason::NotSelected)
    );
}

/// As in Istio, `none` means something only through the selectors: a custom selector that
/// takes every pod takes this one too.
#[test]
fn none_is_only_what_the_selectors_make_of_it() {
    let rules = custom(json!([{"podSelector": {}}])).unwrap();
    assert_eq!(
        rules.decide(&pod("app", "web", &[NONE]), None),
        Decision::Enroll
    );
}

/// Istio's empty list selects nothing (not the defaults).
#[test]
fn no_selectors_select_nothing() {
    let rules = EnrollmentRules::new(vec![], "istio-system", &[]).unwrap();
    let ns = namespace("app", &[AMBIENT]);
    assert_eq!(
        rules.decide(&pod("app", "web", &[AMBIENT]), Some(&ns)),
        Decision::Skip(SkipReason::NotSelected)
    );
}

/// Keys and values follow Kubernetes' label syntax, as `LabelSelectorAsSelector` checks it.
#[test]
fn invalid_label_keys_and_values_are_refused() {
    for bad in [
        json!([{"podSelector": {"matchLabels": {"bad key": "x"}}}]),
        json!([{"podSelector": {"matchLabels": {"a/b/c": "x"}}}]),
        json!([{"podSelector": {"matchLabels": {"UPPER.io/x": "x"}}}]),
        json!([{"podSelector": {"matchLabels": {"example.com/": "x"}}}]),
        json!([{"podSelector": {"matchLabels": {"k": "-starts-with-dash"}}}]),
        json!([{"namespaceSelector": {"matchExpressions": [
            {"key": "k", "operator": "In", "values": ["ok", "not ok"]}]}}]),
        json!([{"podSelector": {"matchLabels": {"k": "x".repeat(64)}}}]),
    ] {
        let err = custom(bad.clone()).expect_err(&bad.to_string()).to_string();
        assert!(err.contains("enablement_selectors[0]"), "{err}");
    }
    // Valid: a prefixed key, an empty value, dots, dashes and underscores.
    custom(json!([{"podSelector": {"matchLabels": {
        "istio.io/dataplane-mode": "ambient", "app.kubernetes.io/name": "", "a_b-c.d": "v_1-2.3"
    }}}]))
    .unwrap();
}

#[test]
fn host_network_is_never_enrolled() {
    let ns = namespace("app", &[AMBIENT]);
    let mut p = pod("app", "web", &[AMBIENT]);
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        defaults().decide(&p, Some(&ns)),
        Decision::Skip(SkipReason::HostNetwork)
    );
}

#[test]
fn sidecar_injected_is_never_enrolled() {
    let ns = namespace("app", &[AMBIENT]);
    let mut p = pod("app", "web", &[AMBIENT]);
    p.metadata.annotations = labels(&[(SIDECAR_STATUS_ANNOTATION, "{}")]);
    assert_eq!(
        defaults().decide(&p, Some(&ns)),
        Decision::Skip(SkipReason::SidecarInjected)
    );
}

#[test]
fn excluded_namespace_wins() {
    let ns = namespace("kube-system", &[AMBIENT]);
    let rules = defaults();
    assert_eq!(
        rules.decide(&pod("kube-system", "dns", &[AMBIENT]), Some(&ns)),
        Decision::Skip(SkipReason::ExcludedNamespace("kube-system".into()))
    );
    assert_eq!(
        rules.skip_by_name("kube-system", "dns"),
        Some(SkipReason::ExcludedNamespace("kube-system".into()))
    );
    assert_eq!(rules.skip_by_name("app", "dns"), None);
}

#[test]
fn empty_exclusions_are_ignored() {
    let rules =
        EnrollmentRules::new(vec!["".into(), " a ".into()], "", &default_selectors()).unwrap();
    assert!(rules.is_excluded_namespace("a"));
    assert!(!rules.is_excluded_namespace(""));
}

#[test]
fn agent_pods_are_recognised_by_prefix_in_own_namespace() {
    let ns = namespace("istio-system", &[AMBIENT]);
    let rules = defaults();
    assert_eq!(
        rules.decide(&pod("istio-system", "istio-cni-node-x7k2p", &[]), Some(&ns)),
        Decision::Skip(SkipReason::AgentPod)
    );
    assert_eq!(
        rules.skip_by_name("istio-system", "istio-cni-node-abc"),
        Some(SkipReason::AgentPod)
    );
    // Same name elsewhere is an ordinary pod.
    assert_eq!(rules.skip_by_name("app", "istio-cni-node-abc"), None);
    // Another prefix can be configured.
    let rules = rules.with_agent_pod_prefix("nodetunnel-cni-");
    assert_eq!(
        rules.skip_by_name("istio-system", "nodetunnel-cni-abc"),
        Some(SkipReason::AgentPod)
    );
    // Without an own namespace nothing is an agent pod.
    let rules = EnrollmentRules::new(vec![], "", &[]).unwrap();
    assert_eq!(rules.skip_by_name("", "istio-cni-node-abc"), None);
}

#[test]
fn tunnel_pods_are_never_enrolled() {
    let ns = namespace("istio-system", &[AMBIENT]);
    assert_eq!(
        defaults().decide(
            &pod("istio-system", "ztunnel-abc", &[("app", "ztunnel")]),
            Some(&ns)
        ),
        Decision::Skip(SkipReason::TunnelPod)
    );
    let other = namespace("app", &[AMBIENT]);
    assert_eq!(
        defaults().decide(
            &pod("app", "ztunnel-abc", &[("app", "ztunnel")]),
            Some(&other)
        ),
        Decision::Enroll
    );
}

#[test]
fn terminated_pods_are_skipped() {
    let ns = namespace("app", &[AMBIENT]);
    for phase in ["Succeeded", "Failed"] {
        let mut p = pod("app", "job", &[]);
        p.status.as_mut().unwrap().phase = Some(phase.into());
        assert_eq!(
            defaults().decide(&p, Some(&ns)),
            Decision::Skip(SkipReason::Terminated(phase.into()))
        );
    }
    let mut p = pod("app", "job", &[]);
    p.status.as_mut().unwrap().phase = Some("Running".into());
    assert_eq!(defaults().decide(&p, Some(&ns)), Decision::Enroll);
    p.status = None;
    assert_eq!(defaults().decide(&p, Some(&ns)), Decision::Enroll);
}

#[test]
fn selectors_or_across_and_within() {
    // Pair 0: pod tier=web AND namespace team=a. Pair 1: pod Exists(mesh).
    let rules = custom(json!([
        {"podSelector": {"matchLabels": {"tier": "web"}},
         "namespaceSelector": {"matchLabels": {"team": "a"}}},
        {"podSelector": {"matchExpressions": [{"key": "mesh", "operator": "Exists"}]}}
    ]))
    .unwrap();
    let team_a = namespace("app", &[("team", "a")]);
    let team_b = namespace("app", &[("team", "b")]);
    assert_eq!(
        rules.decide(&pod("app", "p", &[("tier", "web")]), Some(&team_a)),
        Decision::Enroll
    );
    assert_eq!(
        rules.decide(&pod("app", "p", &[("tier", "web")]), Some(&team_b)),
        Decision::Skip(SkipReason::NotSelected)
    );
    assert_eq!(
        rules.decide(&pod("app", "p", &[("mesh", "")]), Some(&team_b)),
        Decision::Enroll
    );
    // With custom selectors the default label no longer enrolls on its own.
    assert_eq!(
        rules.decide(&pod("app", "p", &[AMBIENT]), Some(&team_b)),
        Decision::Skip(SkipReason::NotSelected)
    );
}

#[test]
fn expression_operators() {
    let rules = custom(json!([{"podSelector": {"matchExpressions": [
        {"key": "env", "operator": "In", "values": ["prod", "stage"]},
        {"key": "legacy", "operator": "DoesNotExist"},
        {"key": "tier", "operator": "NotIn", "values": ["db"]}
    ]}}]))
    .unwrap();
    let decide = |l: &[(&str, &str)]| rules.decide(&pod("app", "p", l), None);
    assert_eq!(decide(&[("env", "prod")]), Decision::Enroll);
    assert_eq!(
        decide(&[("env", "stage"), ("tier", "web")]),
        Decision::Enroll
    );
    // In needs the label.
    assert_eq!(decide(&[]), Decision::Skip(SkipReason::NotSelected));
    assert_eq!(
        decide(&[("env", "dev")]),
        Decision::Skip(SkipReason::NotSelected)
    );
    assert_eq!(
        decide(&[("env", "prod"), ("legacy", "1")]),
        Decision::Skip(SkipReason::NotSelected)
    );
    assert_eq!(
        decide(&[("env", "prod"), ("tier", "db")]),
        Decision::Skip(SkipReason::NotSelected)
    );
}

#[test]
fn empty_selectors_match_everything() {
    let rules = custom(json!([{}])).unwrap();
    assert_eq!(rules.decide(&pod("app", "p", &[]), None), Decision::Enroll);
}

#[test]
fn invalid_selectors_are_rejected() {
    let bad = [
        (
            json!([{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}}]),
            "unknown operator",
        ),
        (
            json!([{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]),
            "needs at least one value",
        ),
        (
            json!([{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]),
            "takes no values",
        ),
        (
            json!([{"podSelector": {"matchLabels": {"": "x"}}}]),
            "empty label key",
        ),
        (json!(["not an object"]), "not a selector object"),
    ];
    for (selectors, want) in bad {
        let err = custom(selectors.clone()).unwrap_err().to_string();
        assert!(err.contains(want), "{selectors}: {err}");
        assert!(err.contains("enablement_selectors[0]"), "{err}");
    }
}

#[test]
fn defaults_equal_explicit_istio_defaults() {
    let explicit = custom(json!([
        {"podSelector": {"matchLabels": {"istio.io/dataplane-mode": "ambient"}}},
        {"podSelector": {"matchExpressions": [
            {"key": "istio.io/dataplane-mode", "operator": "NotIn", "values": ["none"]}]},
         "namespaceSelector": {"matchLabels": {"istio.io/dataplane-mode": "ambient"}}}
    ]))
    .unwrap();
    assert_eq!(
        explicit,
        EnrollmentRules::new(vec![], "istio-system", &default_selectors()).unwrap()
    );
}

#[test]
fn yaml_selectors_parse() {
    let parsed = parse_selectors_yaml(
        "- podSelector:\n    matchLabels: {istio.io/dataplane-mode: ambient}\n",
    )
    .unwrap();
    assert_eq!(parsed.len(), 1);
    assert!(parse_selectors_yaml("  ").unwrap().is_empty());
    // The chart's renderings of an empty and a null list.
    assert!(parse_selectors_yaml("[]").unwrap().is_empty());
    assert!(parse_selectors_yaml("null").unwrap().is_empty());
    assert!(parse_selectors_yaml("- podSelector: 3").is_err());
}

#[test]
fn from_plugin_config_uses_its_fields() {
    let config: PluginConfig = serde_json::from_value(json!({
        "cniVersion": "1.0.0", "type": "istio-cni",
        "exclude_namespaces": ["skip-me"], "pod_namespace": "istio-system",
        "enablement_selectors": [{"podSelector": {"matchLabels": {"x": "y"}}}]
    }))
    .unwrap();
    let rules = EnrollmentRules::from_plugin_config(&config).unwrap();
    assert!(rules.is_excluded_namespace("skip-me"));
    assert_eq!(
        rules.decide(&pod("app", "p", &[("x", "y")]), None),
        Decision::Enroll
    );
    assert_eq!(
        rules.skip_by_name("istio-system", "istio-cni-node-1"),
        Some(SkipReason::AgentPod)
    );
}

#[test]
fn reasons_read_as_sentences() {
    assert_eq!(
        SkipReason::ExcludedNamespace("kube-system".into()).to_string(),
        "namespace kube-system is excluded"
    );
    assert!(SkipReason::NotSelected
        .to_string()
        .contains("istio.io/dataplane-mode=none"));
    assert!(SkipReason::NotSelected.to_string().contains("ambient"));
}
