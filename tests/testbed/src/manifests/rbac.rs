//! RBAC as the API server would apply it to one service account of a rendered overlay, and the
//! requests the Kubernetes API stand-in recorded ([`crate::kube_api::KubeApi::requests`]) as the
//! (verb, resource) checks the API server would make for them. A test compares the two both
//! ways: every call allowed, every permission used.

use std::fmt;

use serde_json::Value;

use super::Rendered;
use crate::error::{Error, Result};

/// One API request as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// With its subresource: `pods/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ApiCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " named {name}")?;
        }
        Ok(())
    }
}

/// One rule of a (Cluster)Role bound to the service account, with where it applies.
#[derive(Clone, Debug)]
pub struct Grant {
    /// `ClusterRole x` or `Role ns/x`, for messages.
    pub source: String,
    /// `None`: cluster-wide (a ClusterRoleBinding); else the RoleBinding's namespace.
    pub namespace: Option<String>,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// Empty: any name.
    pub names: Vec<String>,
}

impl Grant {
    pub fn allows(&self, call: &ApiCall) -> bool {
        let has = |list: &[String], item: &str| list.iter().any(|x| x == item || x == "*");
        self.namespace
            .as_ref()
            .is_none_or(|ns| call.namespace.as_ref() == Some(ns))
            && has(&self.groups, &call.group)
            && has(&self.resources, &call.resource)
            && has(&self.verbs, &call.verb)
            && (self.names.is_empty() || call.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }

    /// Every (verb, resource, name) this rule grants, each as the call it would allow.
    pub fn calls(&self) -> Vec<ApiCall> {
        let names: Vec<Option<String>> = if self.names.is_empty() {
            vec![None]
        } else {
            self.names.iter().cloned().map(Some).collect()
        };
        let mut calls = Vec::new();
        for group in &self.groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    for name in &names {
                        calls.push(ApiCall {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            namespace: self.namespace.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
        calls
    }
}

/// The rules bound to `namespace/service_account` in `rendered`: ClusterRoles through
/// ClusterRoleBindings (cluster-wide) and Roles through RoleBindings (in their namespace).
pub fn grants(rendered: &Rendered, namespace: &str, service_account: &str) -> Result<Vec<Grant>> {
    let mut grants = Vec::new();
    for (binding_kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        for binding in rendered.of_kind(binding_kind) {
            let bound = binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == service_account
                        && s["namespace"] == namespace
                });
            if !bound {
                continue;
            }
            let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let scope = (role_kind == "Role").then(|| {
                binding["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            });
            let role = rendered.object(
                binding["roleRef"]["kind"].as_str().unwrap_or(role_kind),
                role_name,
            )?;
            for rule in role["rules"].as_array().into_iter().flatten() {
                grants.push(Grant {
                    source: match &scope {
                        Some(ns) => format!("Role {ns}/{role_name}"),
                        None => format!("ClusterRole {role_name}"),
                    },
                    namespace: scope.clone(),
                    groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    verbs: strings(&rule["verbs"]),
                    names: strings(&rule["resourceNames"]),
                });
            }
        }
    }
    Ok(grants)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The authorization check behind a recorded request line (`GET /api/v1/pods?watch=true&…`,
/// `PATCH /api/v1/namespaces/default/pods/web [application/merge-patch+json]`). `Ok(None)` for
/// discovery (`/api`, `/apis`, `/version`, group versions), which every authenticated caller
/// may read (Kubernetes' `system:discovery`), so no Role grants it.
pub fn api_call(line: &str) -> Result<Option<ApiCall>> {
    let bad = |why: &str| Error::Invalid(format!("request {line:?}: {why}"));
    let (method, rest) = line.split_once(' ').ok_or_else(|| bad("no method"))?;
    let target = rest.split(' ').next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["version"] | ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] => {
            return Ok(None)
        }
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return Err(bad("not an API path")),
    };
    let (namespace, resource, name, sub) = match rest {
        // A namespace object itself: `namespaces/<name>` is the namespaces resource.
        ["namespaces"] => (None, "namespaces", None, None),
        ["namespaces", ns] => (None, "namespaces", Some(*ns), None),
        ["namespaces", ns, resource] => (Some(*ns), *resource, None, None),
        ["namespaces", ns, resource, name] => (Some(*ns), *resource, Some(*name), None),
        ["namespaces", ns, resource, name, sub] => (Some(*ns), *resource, Some(*name), Some(*sub)),
        [resource] => (None, *resource, None, None),
        [resource, name] => (None, *resource, Some(*name), None),
        _ => return Err(bad("not a resource path")),
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("POST", _) => "create",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(bad("a method this check does not know")),
    };
    Ok(Some(ApiCall {
        verb: verb.to_string(),
        group,
        resource: match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        },
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(line: &str) -> String {
        api_call(line)
            .unwrap()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn request_lines_become_the_checks_the_api_server_makes() {
        assert_eq!(
            call("GET /api/v1/pods?fieldSelector=spec.nodeName=n1&watch=true&resourceVersion=5"),
            "watch core/pods"
        );
        assert_eq!(
            call("GET /api/v1/namespaces?limit=500"),
            "list core/namespaces"
        );
        assert_eq!(
            call("GET /api/v1/namespaces/demo"),
            "get core/namespaces named demo"
        );
        assert_eq!(
            call("PATCH /api/v1/namespaces/demo/pods/web [application/merge-patch+json]"),
            "patch core/pods in demo named web"
        );
        assert_eq!(
            call("GET /apis/apps/v1/namespaces/istio-system/daemonsets/cni"),
            "get apps/daemonsets in istio-system named cni"
        );
        assert_eq!(
            call("GET /api/v1/namespaces/d/pods/w/status"),
            "get core/pods/status in d named w"
        );
        assert_eq!(call("GET /version"), "");
        assert_eq!(call("GET /apis/apps/v1"), "");
        assert!(api_call("GET /healthz").is_err());
    }
}
