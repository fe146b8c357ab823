//! The kubeconfig the plugin uses to read pods and namespaces, written under the agent's run
//! dir from the agent's own client config.
//!
//! Facts from Istio (`cni/pkg/install/kubeconfig.go`): one cluster `local`, one user
//! `istio-cni`, one context `istio-cni-context` made current; the CA inline as
//! `certificate-authority-data` unless `insecure-skip-tls-verify` is set; the service-account
//! token inline as `token`; written atomically with mode 0600 (Istio's default
//! `KUBECONFIG_MODE`) into the run dir, not the shared CNI config dir. The token is inlined
//! rather than referenced as `tokenFile` because the agent's token path exists only inside
//! the agent's container, while the plugin runs in the host's mount namespace. A rotated token
//! keeps working because the installer re-renders this file on every check and rewrites it
//! when it changed (Istio likewise rewrites it when the token file changes).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use thiserror::Error;

use super::files::{self, FileError};

/// Mode of the kubeconfig: it holds a bearer token.
pub(crate) const KUBECONFIG_MODE: u32 = 0o600;
const CLUSTER: &str = "local";
const USER: &str = "istio-cni";
const CONTEXT: &str = "istio-cni-context";

#[derive(Debug, Error)]
pub enum KubeconfigError {
    #[error("cannot read the API server CA bundle {path}: {source}")]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("cannot read the credential file {path}: {source}")]
    ReadCredential { path: PathBuf, source: io::Error },
    #[error(
        "the agent's client config authenticates with {method}, which cannot be handed to the \
         plugin; use a token, a token file or a client certificate"
    )]
    UnsupportedAuth { method: &'static str },
    #[error("cannot create the run dir {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot serialize the kubeconfig: {0}")]
    Serialize(#[from] serde_yaml_ng::Error),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Writes the kubeconfig for `kube` to `path` when the file is missing, differs, or has
/// another mode; returns whether it wrote. Creates the run dir if needed.
pub fn ensure(kube: &kube::Config, path: &Path) -> Result<bool, KubeconfigError> {
    let text = render(kube)?;
    if fs::read(path).is_ok_and(|have| have == text.as_bytes())
        && files::mode_of(path) == Some(KUBECONFIG_MODE)
    {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| KubeconfigError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    files::atomic_write(path, text.as_bytes(), KUBECONFIG_MODE)?;
    Ok(true)
}

/// The kubeconfig text for `kube`. Credential and CA files are read now, so the result holds
/// their current content.
pub fn render(kube: &kube::Config) -> Result<String, KubeconfigError> {
    let mut cluster = Map::new();
    cluster.insert("server".into(), json!(server_url(&kube.cluster_url)));
    if kube.accept_invalid_certs {
        cluster.insert("insecure-skip-tls-verify".into(), json!(true));
    } else if let Some(pem) = ca_pem(kube)? {
        cluster.insert(
            "certificate-authority-data".into(),
            json!(base64(pem.as_bytes())),
        );
    }
    if let Some(name) = &kube.tls_server_name {
        cluster.insert("tls-server-name".into(), json!(name));
    }

    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": cluster}],
        "users": [{"name": USER, "user": user(&kube.auth_info)?}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CLUSTER, "user": USER}}],
        "current-context": CONTEXT,
    });
    let yaml = serde_yaml_ng::to_string(&doc)?;
    Ok(format!(
        "# Kubeconfig for the nodetunnel CNI plugin, kept up to date by the node agent.\n{yaml}"
    ))
}

/// `https://10.96.0.1/` → `https://10.96.0.1`: `http::Uri` prints an empty path as `/`.
fn server_url(uri: &http::Uri) -> String {
    let s = uri.to_string();
    match (uri.path(), s.strip_suffix('/')) {
        ("/", Some(trimmed)) if uri.query().is_none() => trimmed.to_owned(),
        _ => s,
    }
}

/// The CA bundle as PEM: the bundle file when the config names one (re-read so a rotated CA
/// is picked up), else the certificates loaded at start.
fn ca_pem(kube: &kube::Config) -> Result<Option<String>, KubeconfigError> {
    if let Some(path) = &kube.root_cert_file {
        let pem = fs::read_to_string(path).map_err(|source| KubeconfigError::ReadCa {
            path: path.clone(),
            source,
        })?;
        return Ok(Some(pem));
    }
    Ok(kube
        .root_cert
        .as_ref()
        .filter(|certs| !certs.is_empty())
        .map(|certs| certs.iter().map(|der| der_to_pem(der)).collect()))
}

/// The user entry: the agent's credentials, inlined. `AuthInfo` keeps its secrets in
/// `SecretString`s; its serde form exposes them under the kubeconfig field names.
fn user(auth: &kube::config::AuthInfo) -> Result<Value, KubeconfigError> {
    let exposed = serde_json::to_value(auth).unwrap_or(Value::Null);
    let mut user = Map::new();
    if let Some(Value::String(token)) = exposed.get("token") {
        user.insert("token".into(), json!(token));
    } else if let Some(file) = &auth.token_file {
        let token = read_credential(Path::new(file))?;
        user.insert("token".into(), json!(token.trim()));
    }
    match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => {
            user.insert("client-certificate-data".into(), json!(data));
        }
        (None, Some(path)) => {
            let pem = read_credential(Path::new(path))?;
            user.insert(
                "client-certificate-data".into(),
                json!(base64(pem.as_bytes())),
            );
        }
        (None, None) => {}
    }
    match (exposed.get("client-key-data"), &auth.client_key) {
        (Some(Value::String(data)), _) => {
            user.insert("client-key-data".into(), json!(data));
        }
        (_, Some(path)) => {
            let pem = read_credential(Path::new(path))?;
            user.insert("client-key-data".into(), json!(base64(pem.as_bytes())));
        }
        _ => {}
    }
    if user.is_empty() {
        if auth.exec.is_some() {
            return Err(KubeconfigError::UnsupportedAuth {
                method: "an exec plugin",
            });
        }
        if auth.auth_provider.is_some() {
            return Err(KubeconfigError::UnsupportedAuth {
                method: "an auth provider",
            });
        }
        if auth.username.is_some() {
            return Err(KubeconfigError::UnsupportedAuth {
                method: "basic auth",
            });
        }
    }
    Ok(Value::Object(user))
}

fn read_credential(path: &Path) -> Result<String, KubeconfigError> {
    fs::read_to_string(path).map_err(|source| KubeconfigError::ReadCredential {
        path: path.to_owned(),
        source,
    })
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Standard base64 with padding (RFC 4648 §4), as kubeconfig `*-data` fields use.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn server_url_drops_only_an_empty_path() {
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(server_url(&u("https://10.96.0.1")), "https://10.96.0.1");
        assert_eq!(
            server_url(&u("https://[fd00::1]:6443/")),
            "https://[fd00::1]:6443"
        );
        assert_eq!(server_url(&u("https://h/k8s/")), "https://h/k8s/");
    }

    #[test]
    fn pem_lines_are_64_wide() {
        let pem = der_to_pem(&[7u8; 100]);
        let lines: Vec<_> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
    }
}
