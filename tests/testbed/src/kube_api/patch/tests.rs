use super::*;
use serde_json::json;

fn obj() -> Value {
    json!({"metadata": {"name": "p", "annotations": {"a": "1"}, "labels": {"x": "y"}}, "l": [1, 2]})
}

fn patched(kind: PatchKind, body: Value) -> Result<Value, PatchError> {
    apply(kind, &obj(), body.to_string().as_bytes())
}

#[test]
fn merge_patch_adds_replaces_and_removes() {
    let out = patched(
        PatchKind::Merge,
        json!({"metadata": {"annotations": {"a": null, "ambient.istio.io/redirection": "enabled"}}, "l": [3]}),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"metadata": {"name": "p", "annotations": {"ambient.istio.io/redirection": "enabled"}, "labels": {"x": "y"}}, "l": [3]})
    );
}

#[test]
fn json_patch_with_escaped_pointer() {
    let out = patched(
        PatchKind::Json,
        json!([
            {"op": "add", "path": "/metadata/annotations/ambient.istio.io~1redirection", "value": "enabled"},
            {"op": "test", "path": "/metadata/annotations/ambient.istio.io~1redirection", "value": "enabled"},
            {"op": "remove", "path": "/metadata/annotations/a"},
            {"op": "replace", "path": "/l/0", "value": 9},
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "copy", "from": "/metadata/name", "path": "/n"},
            {"op": "move", "from": "/n", "path": "/m"},
        ]),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"metadata": {"name": "p", "annotations": {"ambient.istio.io/redirection": "enabled"}, "labels": {"x": "y"}}, "l": [9, 2, 3], "m": "p"})
    );
}

#[test]
fn json_patch_failures_are_typed() {
    let remove_missing = json!([{"op": "remove", "path": "/metadata/annotations/zzz"}]);
    assert!(matches!(
        patched(PatchKind::Json, remove_missing),
        Err(PatchError::NoSuchPath { index: 0, .. })
    ));
    let failed_test = json!([{"op": "test", "path": "/metadata/name", "value": "q"}]);
    assert!(matches!(
        patched(PatchKind::Json, failed_test),
        Err(PatchError::TestFailed { index: 0, .. })
    ));
    assert!(matches!(
        patched(PatchKind::Json, json!([{"op": "frob", "path": "/a"}])),
        Err(PatchError::BadOperation { index: 0, .. })
    ));
    assert!(matches!(
        patched(PatchKind::Json, json!({"op": "add"})),
        Err(PatchError::NotAnArray)
    ));
    assert!(matches!(
        patched(PatchKind::Merge, json!([1])),
        Err(PatchError::NotAnObject(_))
    ));
    assert!(matches!(
        apply(PatchKind::Merge, &obj(), b"{"),
        Err(PatchError::NotJson(_))
    ));
    let index_out_of_range = json!([{"op": "add", "path": "/l/5", "value": 1}]);
    assert!(matches!(
        patched(PatchKind::Json, index_out_of_range),
        Err(PatchError::NoSuchPath { .. })
    ));
}

#[test]
fn content_types() {
    assert_eq!(
        PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
        Some(PatchKind::Merge)
    );
    assert_eq!(PatchKind::from_content_type("application/json"), None);
}
