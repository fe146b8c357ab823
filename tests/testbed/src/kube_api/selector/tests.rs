use super::*;
use serde_json::json;

fn pod() -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}},
        "spec": {"nodeName": "n1", "hostNetwork": false},
    })
}

#[test]
fn label_requirements() {
    let p = pod();
    let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&p);
    assert!(m(""));
    assert!(m("app=web"));
    assert!(m("app==web,tier"));
    assert!(!m("app!=web"));
    assert!(m("version!=v1"));
    assert!(m("!version"));
    assert!(!m("!app"));
    assert!(m("app in (db, web)"));
    assert!(!m("app in (db)"));
    assert!(m("app notin (db),tier in (fe)"));
    assert!(m("version notin (v1)"));
    assert!(!m("version in (v1)"));
}

#[test]
fn bad_label_selectors_are_errors() {
    assert!(matches!(
        LabelSelector::parse("app in (a"),
        Err(SelectorError::Unbalanced(_))
    ));
    assert!(matches!(
        LabelSelector::parse("a,,b"),
        Err(SelectorError::Empty(_))
    ));
    assert!(matches!(
        LabelSelector::parse("app in x"),
        Err(SelectorError::BadSet(_))
    ));
    assert!(matches!(
        LabelSelector::parse("a b=c"),
        Err(SelectorError::BadKey(_))
    ));
}

#[test]
fn field_requirements() {
    let p = pod();
    let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&p);
    assert!(m("spec.nodeName=n1"));
    assert!(!m("spec.nodeName=n2"));
    assert!(m("spec.nodeName==n1,metadata.namespace=ns"));
    assert!(m("metadata.name!=q"));
    assert!(m("spec.hostNetwork=false"));
    assert!(m("status.phase="));
    assert!(matches!(
        FieldSelector::parse("spec.nodeName"),
        Err(SelectorError::NoOperator(_))
    ));
}
