use super::*;
use serde_json::json;

fn ours() -> Value {
    json!({"type": "nodetunnel-cni", "cni_agent_run_dir": "/var/run/istio-cni"})
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn appends_last_and_takes_the_list_version() {
    let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp"}]});
    let out = insert(list, &ours()).unwrap();
    let plugins = out["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[1]["type"], "nodetunnel-cni");
    assert_eq!(plugins[1]["cniVersion"], "1.0.0");
    assert_eq!(keys(&out), ["cniVersion", "name", "plugins"]);
}

#[test]
fn replaces_a_previous_entry_and_moves_it_last() {
    let list = json!({"name": "k8s", "cniVersion": "0.3.1", "plugins": [
        {"type": "nodetunnel-cni", "old": true}, {"type": "ptp"}, {"type": "portmap"}]});
    let out = insert(list, &ours()).unwrap();
    let types: Vec<_> = out["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ptp", "portmap", "nodetunnel-cni"]);
    assert!(out["plugins"][2].get("old").is_none());
    assert_eq!(insert(out.clone(), &ours()).unwrap(), out);
}

#[test]
fn a_list_without_version_gives_an_entry_without_version() {
    let list = json!({"name": "k8s", "plugins": [{"type": "ptp"}]});
    let mut entry = ours();
    entry["cniVersion"] = json!("0.4.0");
    let out = insert(list, &entry).unwrap();
    assert!(out["plugins"][1].get("cniVersion").is_none());
}

#[test]
fn wraps_a_single_config_keeping_it_whole() {
    let conf = json!({"cniVersion": "0.4.0", "name": "bridge", "type": "bridge", "x": 1});
    let out = insert(conf.clone(), &ours()).unwrap();
    assert_eq!(keys(&out), ["name", "cniVersion", "plugins"]);
    assert_eq!(out["name"], "bridge");
    assert_eq!(out["plugins"][0], conf);
    assert_eq!(out["plugins"][1]["cniVersion"], "0.4.0");
    assert!(is_valid(&out, Shape::List));
}

#[test]
fn wrapping_a_nameless_config_uses_the_default_name() {
    let out = insert(json!({"type": "bridge"}), &ours()).unwrap();
    assert_eq!(out["name"], DEFAULT_LIST_NAME);
    assert!(out.get("cniVersion").is_none());
}

#[test]
fn rejects_what_is_not_a_config() {
    assert_eq!(insert(json!([1]), &ours()), Err(ConflistError::NotAnObject));
    assert_eq!(
        insert(json!({"name": "x"}), &ours()),
        Err(ConflistError::NeitherListNorPlugin)
    );
    assert_eq!(
        insert(json!({"name": "x", "plugins": {}}), &ours()),
        Err(ConflistError::PluginsNotArray)
    );
    assert_eq!(
        insert(json!({"name": "x", "plugins": [{"type": "a"}, 3]}), &ours()),
        Err(ConflistError::PluginNotObject { index: 1 })
    );
    assert_eq!(
        insert(json!({"name": "x", "plugins": []}), &json!({"type": ""})),
        Err(ConflistError::EntryWithoutType)
    );
}

#[test]
fn remove_is_idempotent_and_leaves_others() {
    let list = json!({"name": "k8s", "plugins": [{"type": "ptp"}, {"type": "nodetunnel-cni"}]});
    let once = remove(list, "nodetunnel-cni");
    assert_eq!(once, json!({"name": "k8s", "plugins": [{"type": "ptp"}]}));
    assert_eq!(remove(once.clone(), "nodetunnel-cni"), once);
    assert_eq!(
        remove(json!({"type": "bridge"}), "nodetunnel-cni"),
        json!({"type": "bridge"})
    );
}

#[test]
fn validity_follows_libcni() {
    assert!(is_valid(
        &json!({"name": "a", "plugins": [{"type": "x"}]}),
        Shape::List
    ));
    assert!(!is_valid(&json!({"plugins": [{"type": "x"}]}), Shape::List));
    assert!(!is_valid(&json!({"name": "a", "plugins": []}), Shape::List));
    assert!(!is_valid(
        &json!({"name": "a", "plugins": [{"x": 1}]}),
        Shape::List
    ));
    assert!(!is_valid(
        &json!({"name": "a", "cniVersion": 1, "plugins": [{"type": "x"}]}),
        Shape::List
    ));
    assert!(is_valid(&json!({"type": "bridge"}), Shape::Single));
    assert!(!is_valid(
        &json!({"name": "a", "plugins": [{"type": "x"}]}),
        Shape::Single
    ));
    assert!(!is_valid(&json!("text"), Shape::Single));
}

#[test]
fn contains_finds_our_type_only_in_lists() {
    let list = json!({"name": "k8s", "plugins": [{"type": "nodetunnel-cni"}]});
    assert!(contains(&list, "nodetunnel-cni"));
    assert!(!contains(&list, "ptp"));
    assert!(!contains(
        &json!({"type": "nodetunnel-cni"}),
        "nodetunnel-cni"
    ));
}
