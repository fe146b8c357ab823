//! The PATCH bodies the API server accepts, applied to a stored object (`serde_json::Value`).
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch (`null` removes a key).
//! - `application/strategic-merge-patch+json`: applied as a JSON merge patch. Real strategic
//!   merge differs only for lists with merge keys (containers, ports…); for maps such as
//!   `metadata.annotations` the two agree, which is what the node agent patches.
//! - `application/json-patch+json`: RFC 6902 (`add`, `remove`, `replace`, `move`, `copy`,
//!   `test`) with RFC 6901 pointers (`~1` = `/`, `~0` = `~`).
//! - `application/apply-patch+yaml`: server-side apply, approximated as a merge of the given
//!   fields (no field ownership, no conflicts). kube-rs sends the body as JSON (which is YAML);
//!   other YAML is refused.

use serde_json::{Map, Value};

/// The PATCH flavours, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    StrategicMerge,
    Json,
    Apply,
}

impl PatchKind {
    /// `None` for a content type the server does not take (the caller answers 415).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let essence = ct.split(';').next().unwrap_or("").trim();
        match essence {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Why a patch could not be applied; the object stays as it was.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("patch body is not JSON: {0}")]
    NotJson(String),
    #[error("a {0} patch must be a JSON object")]
    NotAnObject(&'static str),
    #[error("a JSON patch must be an array of operations")]
    NotAnArray,
    #[error("JSON patch operation {index}: {why}")]
    BadOperation { index: usize, why: String },
    #[error("JSON patch operation {index}: path {path:?} does not exist")]
    NoSuchPath { index: usize, path: String },
    #[error("JSON patch operation {index}: test failed at {path:?}")]
    TestFailed { index: usize, path: String },
}

/// Applies a `kind` patch with body `body` to a copy of `target`, returning the result.
pub fn apply(kind: PatchKind, target: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| PatchError::NotJson(e.to_string()))?;
    let mut out = target.clone();
    match kind {
        PatchKind::Merge | PatchKind::StrategicMerge | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(PatchError::NotAnObject(match kind {
                    PatchKind::Apply => "server-side apply",
                    _ => "merge",
                }));
            }
            merge(&mut out, &patch);
        }
        PatchKind::Json => json_patch(&mut out, &patch)?,
    }
    Ok(out)
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6901 pointer → unescaped reference tokens; `""` is the whole document.
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("pointer {pointer:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The array index a token names (`-` = one past the end, allowed only when `append`).
fn array_index(token: &str, len: usize, append: bool) -> Option<usize> {
    if append && token == "-" {
        return Some(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    let i: usize = token.parse().ok()?;
    let limit = if append { len } else { len.saturating_sub(1) };
    (len > 0 || append).then_some(i).filter(|i| *i <= limit)
}

fn get<'a>(doc: &'a Value, toks: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(array_index(t, a.len(), false)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                a.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, toks: &[String], value: Value) -> Option<()> {
    let Some((last, parent)) = toks.split_last() else {
        *doc = value;
        return Some(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return None,
    }
    Some(())
}

fn remove(doc: &mut Value, toks: &[String]) -> Option<Value> {
    let (last, parent) = toks.split_last()?;
    match parent_mut(doc, parent)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// RFC 6902, all or nothing: on any failure `doc` is left as it was (we work on a copy).
fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAnArray)?;
    let mut work = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        let bad = |why: &str| PatchError::BadOperation {
            index,
            why: why.to_string(),
        };
        let field = |name: &str| -> Result<Vec<String>, PatchError> {
            let p = op
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("missing string field {name:?}")))?;
            tokens(p).map_err(|e| bad(&e))
        };
        let missing = |name: &str| PatchError::NoSuchPath {
            index,
            path: op
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad("missing \"value\""))
        };
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing string field \"op\""))?;
        match name {
            "add" => {
                let path = field("path")?;
                add(&mut work, &path, value()?).ok_or_else(|| missing("path"))?;
            }
            "remove" => {
                let path = field("path")?;
                if path.is_empty() {
                    return Err(bad("cannot remove the whole document"));
                }
                remove(&mut work, &path).ok_or_else(|| missing("path"))?;
            }
            "replace" => {
                let path = field("path")?;
                let v = value()?;
                if path.is_empty() {
                    work = v;
                } else {
                    remove(&mut work, &path).ok_or_else(|| missing("path"))?;
                    add(&mut work, &path, v).ok_or_else(|| missing("path"))?;
                }
            }
            "move" | "copy" => {
                let from = field("from")?;
                let path = field("path")?;
                if name == "move" && path.len() > from.len() && path.starts_with(&from) {
                    return Err(bad("cannot move a value into its own child"));
                }
                let v = if name == "move" {
                    if from.is_empty() {
                        return Err(bad("cannot move the whole document"));
                    }
                    remove(&mut work, &from).ok_or_else(|| missing("from"))?
                } else {
                    get(&work, &from).cloned().ok_or_else(|| missing("from"))?
                };
                add(&mut work, &path, v).ok_or_else(|| missing("path"))?;
            }
            "test" => {
                let path = field("path")?;
                let want = value()?;
                let have = get(&work, &path).ok_or_else(|| missing("path"))?;
                if *have != want {
                    return Err(PatchError::TestFailed {
                        index,
                        path: op["path"].as_str().unwrap_or("").to_string(),
                    });
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests;
