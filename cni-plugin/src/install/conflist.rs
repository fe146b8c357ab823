//! Pure edits of a CNI network configuration held as JSON: put our plugin entry last in the
//! `plugins` chain, take it out again, and tell whether a document is a config a container
//! runtime would load. Nothing here touches files; callers name the file in their errors.
//!
//! `serde_json` is built with `preserve_order`, so every key keeps its place and a rewritten
//! file differs from the original only where we changed it.
//!
//! Facts from libcni (`ConfFromBytes`, `ConfListFromBytes`, `ConfListFromConf`) that these
//! functions follow: a single config needs a non-empty string `type`; a list needs a string
//! `name`, an optional string `cniVersion` and a `plugins` array whose members are configs;
//! wrapping a single config into a list copies its `name` and `cniVersion` to the list and keeps
//! the config itself unchanged as the first plugin.

use serde_json::{Map, Value};
use thiserror::Error;

/// List name used when a wrapped single config has none (Istio's wrapper uses this name).
pub(crate) const DEFAULT_LIST_NAME: &str = "k8s-pod-network";

/// Why a document cannot take our entry (or our entry is unusable).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConflistError {
    #[error("the config is not a JSON object")]
    NotAnObject,
    #[error("the config has neither a `plugins` array nor a plugin `type`")]
    NeitherListNorPlugin,
    #[error("`plugins` is not an array")]
    PluginsNotArray,
    #[error("plugin {index} in `plugins` is not a JSON object")]
    PluginNotObject { index: usize },
    #[error("our entry is not a JSON object with a non-empty string `type`")]
    EntryWithoutType,
}

/// What kind of CNI config a document is, as libcni would read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A network configuration list (`.conflist`).
    List,
    /// A single network configuration (`.conf`, `.json`).
    Single,
}

/// Whether `doc`, read as `shape`, is a config the runtime would accept: a list with a string
/// `name` and at least one plugin, each with a string `type`; a single config with a
/// non-empty string `type`. Files that fail this are skipped when choosing the primary config,
/// as kubelet, containerd and Istio do.
pub fn is_valid(doc: &Value, shape: Shape) -> bool {
    let Some(obj) = doc.as_object() else {
        return false;
    };
    match shape {
        Shape::Single => has_type(obj),
        Shape::List => {
            let name_ok = obj.get("name").is_some_and(Value::is_string);
            let version_ok = obj.get("cniVersion").is_none_or(Value::is_string);
            let plugins_ok = match obj.get("plugins") {
                Some(Value::Array(plugins)) => {
                    !plugins.is_empty()
                        && plugins.iter().all(|p| p.as_object().is_some_and(has_type))
                }
                _ => false,
            };
            name_ok && version_ok && plugins_ok
        }
    }
}

fn has_type(obj: &Map<String, Value>) -> bool {
    obj.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
}

/// The `type` of a plugin entry, if it is an object with a string `type`.
fn plugin_type(plugin: &Value) -> Option<&str> {
    plugin.get("type").and_then(Value::as_str)
}

/// Returns `existing` with `entry` as the last plugin of its chain.
///
/// - A list keeps every key and every other plugin in place; a previous entry of ours (same
///   `type`, any number of them) is taken out first, so inserting twice equals inserting once.
/// - A single config (an object without `plugins` but with `type`) is wrapped into a list:
///   `name` and `cniVersion` come from it (`name` falls back to `DEFAULT_LIST_NAME`), and it
///   stays unchanged as the first plugin.
/// - Our entry's `cniVersion` follows the list's (or is left out when the list has none), so a
///   primary CNI that moves to a newer spec version carries us along.
pub fn insert(existing: Value, entry: &Value) -> Result<Value, ConflistError> {
    let ours = entry
        .as_object()
        .filter(|o| has_type(o))
        .ok_or(ConflistError::EntryWithoutType)?;
    let our_type = plugin_type(entry).unwrap_or_default().to_owned();

    let Value::Object(mut list) = into_list(existing)? else {
        return Err(ConflistError::NotAnObject);
    };
    let version = list.get("cniVersion").cloned();
    let Some(Value::Array(plugins)) = list.get_mut("plugins") else {
        return Err(ConflistError::PluginsNotArray);
    };
    check_plugins(plugins)?;
    plugins.retain(|p| plugin_type(p) != Some(our_type.as_str()));

    let mut ours = ours.clone();
    match version {
        Some(v) => {
            ours.insert("cniVersion".into(), v);
        }
        None => {
            ours.shift_remove("cniVersion");
        }
    }
    plugins.push(Value::Object(ours));
    Ok(Value::Object(list))
}

/// Returns `existing` without any plugin of type `plugin_type`. Anything that is not a list
/// with a `plugins` array comes back unchanged (there is nothing of ours to take out), so
/// removing twice equals removing once.
pub fn remove(existing: Value, plugin_type_name: &str) -> Value {
    let mut existing = existing;
    if let Some(Value::Array(plugins)) = existing.get_mut("plugins") {
        plugins.retain(|p| plugin_type(p) != Some(plugin_type_name));
    }
    existing
}

/// Whether `doc` is a list whose chain holds a plugin of type `plugin_type_name`.
pub(crate) fn contains(doc: &Value, plugin_type_name: &str) -> bool {
    match doc.get("plugins") {
        Some(Value::Array(plugins)) => plugins
            .iter()
            .any(|p| plugin_type(p) == Some(plugin_type_name)),
        _ => false,
    }
}

/// Turns a single config into a list with it as the only plugin; a list passes through.
fn into_list(existing: Value) -> Result<Value, ConflistError> {
    let Value::Object(obj) = existing else {
        return Err(ConflistError::NotAnObject);
    };
    if obj.contains_key("plugins") {
        return Ok(Value::Object(obj));
    }
    if !obj.contains_key("type") {
        return Err(ConflistError::NeitherListNorPlugin);
    }
    let name = obj
        .get("name")
        .filter(|n| n.is_string())
        .cloned()
        .unwrap_or_else(|| Value::String(DEFAULT_LIST_NAME.into()));
    let mut list = Map::new();
    list.insert("name".into(), name);
    if let Some(version) = obj.get("cniVersion").filter(|v| v.is_string()) {
        list.insert("cniVersion".into(), version.clone());
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
    Ok(Value::Object(list))
}

fn check_plugins(plugins: &[Value]) -> Result<(), ConflistError> {
    match plugins.iter().position(|p| !p.is_object()) {
        Some(index) => Err(ConflistError::PluginNotObject { index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
