//! Label and field selectors as the API server reads them from `labelSelector=` and
//! `fieldSelector=`: a comma-separated conjunction of requirements.
//!
//! Label requirements (Kubernetes "Labels and Selectors" docs): `k=v`, `k==v`, `k!=v`, `k`
//! (exists), `!k` (does not exist), `k in (a,b)`, `k notin (a,b)`. A `!=` or `notin` also
//! matches objects without the label, as the real server does.
//!
//! Field requirements: `path=v`, `path==v`, `path!=v`, where `path` is a dotted JSON path into
//! the object (`spec.nodeName`, `metadata.name`, `metadata.namespace`, `status.phase`); a
//! missing field compares as the empty string. The real server only allows a fixed set of
//! field paths per kind; the stand-in accepts any, which is a superset.

use std::collections::BTreeSet;

use serde_json::Value;

/// Why a selector string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("empty requirement in selector {0:?}")]
    Empty(String),
    #[error("requirement {0:?} has no operator (field selectors need `=`, `==` or `!=`)")]
    NoOperator(String),
    #[error("set requirement {0:?} must look like `key in (a,b)` or `key notin (a,b)`")]
    BadSet(String),
    #[error("unbalanced parentheses in selector {0:?}")]
    Unbalanced(String),
    #[error("invalid key {0:?} in selector requirement")]
    BadKey(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// A parsed `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

/// Splits on commas that are not inside parentheses (`a in (x,y),b` → `a in (x,y)`, `b`).
fn split_top_level(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError::Unbalanced(s.to_string()));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError::Unbalanced(s.to_string()));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn check_key(key: &str) -> Result<String, SelectorError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(SelectorError::BadKey(key.to_string()))
    }
}

/// `(a, b ,c)` → {a, b, c}.
fn parse_set(whole: &str, rest: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError::BadSet(whole.to_string()))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Empty(s.to_string()));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(check_key(k.trim())?, v.trim().to_string())
            } else if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(check_key(k.trim())?)
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelReq::NotIn(check_key(k.trim())?, parse_set(part, rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelReq::In(check_key(k.trim())?, parse_set(part, rest)?)
            } else if part.contains('(') {
                return Err(SelectorError::BadSet(part.to_string()));
            } else {
                LabelReq::Exists(check_key(part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            LabelReq::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
        })
    }
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Empty(s.to_string()));
            }
            let (path, equal, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(SelectorError::NoOperator(part.to_string()));
            };
            let path = check_key(path.trim())?;
            let path = path.split('.').map(str::to_string).collect();
            reqs.push((path, equal, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    /// Whether every `path (=|!=) value` holds for `object` (missing fields read as `""`,
    /// booleans and numbers as their JSON text, e.g. `spec.hostNetwork=true`).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let mut cur = Some(object);
            for seg in path {
                cur = cur.and_then(|v| v.get(seg));
            }
            let have = match cur {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests;
