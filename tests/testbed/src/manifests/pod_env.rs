//! One container of a rendered workload as the kubelet would start it: its environment with
//! every `valueFrom` filled in and `$(VAR)` references expanded, its args, and its volumes
//! written out under a temporary root (ConfigMap and Secret contents from the rendered objects;
//! objects the cluster makes itself, such as istiod's root ConfigMap or a projected token, as
//! placeholder files). Paths under a mount are rewritten into that root, so a binary checking
//! that a named file exists finds exactly the files the manifests would give it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use super::Rendered;
use crate::error::{Error, Result};

/// ConfigMaps the cluster provides, not the manifests: name → the keys it holds.
/// istiod writes its root certificate into `istio-ca-root-cert` in every namespace.
const CLUSTER_CONFIGMAPS: [(&str, &[&str]); 1] = [("istio-ca-root-cert", &["root-cert.pem"])];

/// What the downward API would report for the pod: the values `fieldRef` and
/// `resourceFieldRef` resolve to.
pub struct PodFacts {
    pub pod_name: String,
    pub node_name: String,
    pub pod_ip: String,
    /// The node's allocatable cores: what `limits.cpu` reports when no limit is set.
    pub node_cores: u64,
}

impl PodFacts {
    /// A pod on `node-a` (one of the standalone overlay's nodes) with 4 cores.
    pub fn example(pod_name: &str) -> PodFacts {
        PodFacts {
            pod_name: pod_name.to_string(),
            node_name: "node-a".into(),
            pod_ip: "10.244.0.17".into(),
            node_cores: 4,
        }
    }
}

/// A container ready to run: see the module docs.
pub struct Materialized {
    /// In the manifest's order, values resolved; paths under a mount point into [`Self::root`].
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// `(mountPath, volume name)` in container coordinates.
    pub mounts: Vec<(String, String)>,
    root: tempfile::TempDir,
}

impl Materialized {
    /// Where the container's filesystem paths are written.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The value of `name` in the resolved environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `bin` with exactly this environment (`env -i` + the container's), and its args.
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .envs(self.env.iter().cloned())
            .args(&self.args);
        cmd
    }

    /// `path` as the container sees it: [`Self::root`]'s prefix removed.
    pub fn in_container(&self, path: &str) -> String {
        let root = self.root.path().display().to_string();
        path.strip_prefix(&root).unwrap_or(path).to_string()
    }

    /// The mount `path` (in container coordinates) lies under, if any.
    pub fn mount_of(&self, path: &str) -> Option<&str> {
        self.mounts
            .iter()
            .filter(|(mount, _)| under(path, mount))
            .max_by_key(|(mount, _)| mount.len())
            .map(|(_, volume)| volume.as_str())
    }
}

/// The container `container` of `workload` (a DaemonSet or Deployment of `rendered`), see the
/// module docs. A reference to a ConfigMap, Secret or key that is neither rendered nor made by
/// the cluster is an error naming it.
pub fn materialize(
    rendered: &Rendered,
    workload: &Value,
    container: &str,
    facts: &PodFacts,
) -> Result<Materialized> {
    let pod = &workload["spec"]["template"]["spec"];
    let spec = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .ok_or_else(|| invalid(workload, format!("no container {container}")))?;
    let root = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
    let mut mounts = Vec::new();
    for mount in spec["volumeMounts"].as_array().into_iter().flatten() {
        let (name, path) = (text(&mount["name"]), text(&mount["mountPath"]));
        let volume = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .ok_or_else(|| invalid(workload, format!("volumeMount {name}: no such volume")))?;
        let dir = root.path().join(path.trim_start_matches('/'));
        write_volume(rendered, workload, volume, &dir)?;
        mounts.push((path, name));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in spec["env"].as_array().into_iter().flatten() {
        let name = text(&var["name"]);
        let value = if let Some(from) = var.get("valueFrom") {
            value_from(rendered, workload, spec, from, facts)
                .map_err(|why| invalid(workload, format!("env {name}: {why}")))?
        } else {
            expand(&text(&var["value"]), &env)
        };
        env.push((name, value));
    }
    let rewrite = |value: String| match mounts.iter().find(|(m, _)| under(&value, m)) {
        Some(_) => root
            .path()
            .join(value.trim_start_matches('/'))
            .display()
            .to_string(),
        None => value,
    };
    let env = env.into_iter().map(|(n, v)| (n, rewrite(v))).collect();
    let args = spec["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| rewrite(text(a)))
        .collect();
    Ok(Materialized {
        env,
        args,
        mounts,
        root,
    })
}

/// `path` is `mount` or below it.
fn under(path: &str, mount: &str) -> bool {
    path == mount
        || path
            .strip_prefix(mount)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `$(NAME)` replaced by the value of a variable defined earlier in the list, `$$` by `$`, as
/// the kubelet does; a reference to anything else stays as written (the kubelet leaves it too).
fn expand(value: &str, earlier: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match earlier.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn value_from(
    rendered: &Rendered,
    workload: &Value,
    container: &Value,
    from: &Value,
    facts: &PodFacts,
) -> std::result::Result<String, String> {
    if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
        let pod = &workload["spec"]["template"]["spec"];
        return match field {
            "metadata.name" => Ok(facts.pod_name.clone()),
            "metadata.namespace" => Ok(text(&workload["metadata"]["namespace"])),
            "spec.nodeName" => Ok(facts.node_name.clone()),
            "status.podIP" => Ok(facts.pod_ip.clone()),
            "spec.serviceAccountName" => Ok(text(&pod["serviceAccountName"])),
            other => Err(format!("fieldRef {other} is not one this check knows")),
        };
    }
    if let Some(resource) = from["resourceFieldRef"]["resource"].as_str() {
        let divisor = cpu_cores(from["resourceFieldRef"]["divisor"].as_str().unwrap_or("1"))?;
        let resources = &container["resources"];
        let quantity = match resource {
            "limits.cpu" => resources["limits"]["cpu"].as_str(),
            "requests.cpu" => resources["requests"]["cpu"].as_str(),
            other => {
                return Err(format!(
                    "resourceFieldRef {other} is not one this check knows"
                ))
            }
        };
        // No limit: the kubelet reports the node's allocatable cores.
        let cores = match quantity {
            Some(q) => cpu_cores(q)?,
            None => facts.node_cores as f64,
        };
        return Ok(((cores / divisor).ceil() as u64).to_string());
    }
    if let Some(key_ref) = from.get("configMapKeyRef") {
        let data = configmap_data(rendered, &text(&key_ref["name"]))?;
        let key = text(&key_ref["key"]);
        return data
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("ConfigMap {} has no key {key}", key_ref["name"]));
    }
    if let Some(key_ref) = from.get("secretKeyRef") {
        let data = secret_data(rendered, &text(&key_ref["name"]))?;
        let key = text(&key_ref["key"]);
        return data
            .get(&key)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .ok_or_else(|| format!("Secret {} has no key {key}", key_ref["name"]));
    }
    Err(format!("valueFrom {from} is not one this check knows"))
}

/// A CPU quantity (`2`, `200m`) in cores.
fn cpu_cores(quantity: &str) -> std::result::Result<f64, String> {
    let parsed = match quantity.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map(|m| m / 1000.0),
        None => quantity.parse::<f64>(),
    };
    parsed.map_err(|_| format!("{quantity:?} is not a CPU quantity"))
}

fn configmap_data(
    rendered: &Rendered,
    name: &str,
) -> std::result::Result<BTreeMap<String, String>, String> {
    if let Ok(cm) = rendered.object("ConfigMap", name) {
        return Ok(cm["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect());
    }
    CLUSTER_CONFIGMAPS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, keys)| {
            keys.iter()
                .map(|k| {
                    (
                        k.to_string(),
                        format!("placeholder: {name}/{k}, made by the cluster"),
                    )
                })
                .collect()
        })
        .ok_or_else(|| format!("ConfigMap {name} is neither rendered nor made by the cluster"))
}

fn secret_data(
    rendered: &Rendered,
    name: &str,
) -> std::result::Result<BTreeMap<String, Vec<u8>>, String> {
    let secret = rendered
        .object("Secret", name)
        .map_err(|_| format!("Secret {name} is not rendered"))?;
    let mut data = BTreeMap::new();
    for (key, value) in secret["data"].as_object().into_iter().flatten() {
        let bytes = base64::engine::general_purpose::STANDARD
            // kustomize wraps long values over several lines.
            .decode(text(value).split_whitespace().collect::<String>())
            .map_err(|e| format!("Secret {name} key {key}: not base64: {e}"))?;
        data.insert(key.clone(), bytes);
    }
    for (key, value) in secret["stringData"].as_object().into_iter().flatten() {
        data.insert(key.clone(), text(value).into_bytes());
    }
    Ok(data)
}

/// Writes what `volume` shows the container into `dir`.
fn write_volume(rendered: &Rendered, workload: &Value, volume: &Value, dir: &Path) -> Result<()> {
    let name = text(&volume["name"]);
    let fail = |why: String| invalid(workload, format!("volume {name}: {why}"));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // A ConfigMap or Secret source: every key, or only its `items` (key → path).
    let select = |source: &Value, data: BTreeMap<String, Vec<u8>>| -> Result<Vec<_>> {
        match source["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|item| {
                    let key = text(&item["key"]);
                    data.get(&key)
                        .map(|bytes| (text(&item["path"]), bytes.clone()))
                        .ok_or_else(|| fail(format!("item {key}: no such key")))
                })
                .collect(),
            None => Ok(data.into_iter().collect()),
        }
    };
    let configmap = |source: &Value| -> Result<BTreeMap<String, Vec<u8>>> {
        configmap_data(rendered, &text(&source["name"]))
            .map(|d| d.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
            .map_err(fail)
    };
    let secret = |name: &Value| secret_data(rendered, &text(name)).map_err(fail);
    if let Some(source) = volume.get("configMap") {
        files.extend(select(source, configmap(source)?)?);
    } else if let Some(source) = volume.get("secret") {
        files.extend(select(source, secret(&source["secretName"])?)?);
    } else if let Some(projected) = volume.get("projected") {
        for source in projected["sources"].as_array().into_iter().flatten() {
            if let Some(token) = source.get("serviceAccountToken") {
                let audience = text(&token["audience"]);
                files.push((
                    text(&token["path"]),
                    format!("placeholder: a service-account token for audience {audience}")
                        .into_bytes(),
                ));
            } else if let Some(cm) = source.get("configMap") {
                files.extend(select(cm, configmap(cm)?)?);
            } else if let Some(s) = source.get("secret") {
                files.extend(select(s, secret(&s["name"])?)?);
            } else {
                return Err(fail(format!(
                    "projected source {source} is not one this check knows"
                )));
            }
        }
    } else if volume.get("hostPath").is_none() && volume.get("emptyDir").is_none() {
        return Err(fail(format!(
            "{volume} is not a volume kind this check knows"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    for (path, bytes) in files {
        let file: PathBuf = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        std::fs::write(&file, bytes)
            .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
    }
    Ok(())
}

fn invalid(workload: &Value, why: String) -> Error {
    Error::Invalid(format!(
        "{} {}: {why}",
        workload["kind"].as_str().unwrap_or("object"),
        workload["metadata"]["name"].as_str().unwrap_or("?")
    ))
}

/// A JSON string's text; other values as JSON (numbers in YAML stay numbers).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_only_to_earlier_variables() {
        let earlier = vec![("NODE_NAME".to_string(), "node-a".to_string())];
        assert_eq!(expand("/t/$(NODE_NAME)", &earlier), "/t/node-a");
        assert_eq!(expand("/t/$(LATER)", &earlier), "/t/$(LATER)");
        assert_eq!(expand("$$(NODE_NAME) $5", &earlier), "$(NODE_NAME) $5");
    }

    #[test]
    fn mounts_match_whole_path_components() {
        assert!(under("/var/run/ztunnel/ztunnel.sock", "/var/run/ztunnel"));
        assert!(under("/var/run/ztunnel", "/var/run/ztunnel"));
        assert!(!under("/var/run/ztunnel2/x", "/var/run/ztunnel"));
    }
}
