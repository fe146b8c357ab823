use super::*;
use serde_json::json;

#[test]
fn conflist_validation() {
    assert!(ConfList::parse(&json!([])).is_err());
    assert!(ConfList::parse(&json!({"name": "n", "cniVersion": "1.0.0"})).is_err());
    assert!(ConfList::parse(&json!({"name": "n", "cniVersion": "1.0.0", "plugins": []})).is_err());
    assert!(ConfList::parse(
        &json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{"bridge": "x"}]})
    )
    .is_err());
    let list = ConfList::parse(&json!({"name": "n", "cniVersion": "1.0.0",
        "plugins": [{"type": "a", "name": "other", "cniVersion": "0.1.0"}, {"type": "b"}]}))
    .unwrap();
    assert_eq!(list.plugin_types(), vec!["a", "b"]);
    // The list's name and version replace the plugin's own.
    let c = list.plugin_config(0, Some(&json!({"ips": []}))).unwrap();
    assert_eq!(c["name"], "n");
    assert_eq!(c["cniVersion"], "1.0.0");
    assert_eq!(c["prevResult"], json!({"ips": []}));
    assert!(list
        .plugin_config(1, None)
        .unwrap()
        .get("prevResult")
        .is_none());
    assert!(list.plugin_config(2, None).is_none());
}

#[test]
fn find_searches_in_order_and_rejects_paths() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("p"), "").unwrap();
    let runner = Runner::new(vec![a.path().into(), b.path().into()]);
    assert_eq!(runner.find("p").unwrap(), b.path().join("p"));
    assert!(matches!(
        runner.find("q"),
        Err(CniError::PluginNotFound { .. })
    ));
    assert!(runner.find("../p").is_err());
    assert!(runner.find("").is_err());
}
