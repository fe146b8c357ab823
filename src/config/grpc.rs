//! A gRPC service the tunnel dials (the control plane, the CA): its address, TLS root and
//! token, each from its own variable.

use std::path::PathBuf;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::env::{invalid, Env};
use super::ConfigError;
use crate::grpc::GrpcTarget;

/// Istio's defaults: the mounted istiod root and the projected service-account token.
pub(crate) const DEFAULT_ROOT_CA: &str = "/var/run/secrets/istio/root-cert.pem";
pub(crate) const DEFAULT_AUTH_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

/// Where istiod is from inside a cluster: ztunnel's default for both `XDS_ADDRESS` and
/// `CA_ADDRESS` when the pod runs in Kubernetes.
pub(crate) const DEFAULT_ISTIOD_ADDRESS: &str = "https://istiod.istio-system.svc:15012";

/// The default address of an unset `XDS_ADDRESS` / `CA_ADDRESS`: istiod's service when the
/// tunnel runs in a Kubernetes pod (the kubelet sets `KUBERNETES_SERVICE_HOST` in every pod),
/// none elsewhere. ztunnel falls back to `https://localhost:15012` outside a cluster; we refuse
/// to start instead, because a developer's machine rarely runs istiod there and a tunnel that
/// waits forever on a guessed address is harder to diagnose than an error naming the variable.
pub(super) fn default_istiod_address(env: &Env<'_>) -> Option<&'static str> {
    env.get("KUBERNETES_SERVICE_HOST")
        .map(|_| DEFAULT_ISTIOD_ADDRESS)
}

/// The variables that describe one gRPC service.
pub(super) struct GrpcVars {
    /// Its address (scheme optional, `https://` assumed as ztunnel does).
    pub(super) address: &'static str,
    /// Its TLS root: a file, or `SYSTEM` for the system roots; Istio's mounted root by default.
    pub(super) root_ca: &'static str,
    /// Its bearer token file: Istio's projected token by default, used only if present; an
    /// explicitly named file must exist.
    pub(super) auth_token: &'static str,
    /// `<prefix><name>=<value>`: extra request metadata `<name>: <value>`.
    pub(super) header_prefix: &'static str,
    /// The name its certificate is verified against instead of the address's host.
    pub(super) alt_hostname: &'static str,
}

/// The service `vars` describe, given the value `address` of `vars.address`.
pub(super) fn grpc_target(
    env: &Env<'_>,
    vars: &GrpcVars,
    address: &str,
    cluster_id: &str,
) -> Result<GrpcTarget, ConfigError> {
    let address = if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    };
    match address.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("https" | "http"))
                && uri.host().is_some()
                && uri.port().is_some() => {}
        _ => {
            return Err(invalid(
                vars.address,
                &address,
                "expected https://<host>:<port>, e.g. https://istiod.istio-system.svc:15012",
            ))
        }
    }
    let root_cert = match env.get(vars.root_ca) {
        Some("SYSTEM") => None,
        Some(path) => Some(env.existing_file(vars.root_ca, path)?),
        None => Some(PathBuf::from(DEFAULT_ROOT_CA)),
    };
    let token = match env.get(vars.auth_token) {
        Some(path) => Some(env.existing_file(vars.auth_token, path)?),
        None => Some(PathBuf::from(DEFAULT_AUTH_TOKEN)).filter(|p| p.exists()),
    };
    let tls_server_name = match env.get(vars.alt_hostname) {
        Some(name) if rustls_pki_types::ServerName::try_from(name).is_err() => {
            return Err(invalid(
                vars.alt_hostname,
                name,
                "expected a DNS name or an IP address to verify the server's certificate against",
            ))
        }
        name => name.map(str::to_string),
    };
    Ok(GrpcTarget {
        address,
        root_cert,
        token,
        cluster_id: cluster_id.to_string(),
        headers: headers(env, vars.header_prefix)?,
        tls_server_name,
    })
}

/// Every `<prefix><name>=<value>` as gRPC metadata, sorted by variable so requests do not
/// depend on the environment's order. Names are lower-cased on the wire (HTTP/2 requires it).
/// A value is never echoed in an error: such headers often carry credentials.
fn headers(
    env: &Env<'_>,
    prefix: &str,
) -> Result<Vec<(AsciiMetadataKey, AsciiMetadataValue)>, ConfigError> {
    let mut vars: Vec<(String, String)> = env.prefixed(prefix).collect();
    vars.sort();
    vars.into_iter()
        .map(|(name, value)| {
            let var = format!("{prefix}{name}");
            let refuse = |reason: &str| ConfigError::InvalidHeader {
                var: var.clone(),
                reason: reason.to_string(),
            };
            let name = name.as_str();
            let key = AsciiMetadataKey::from_bytes(name.as_bytes()).map_err(|_| {
                refuse("the part after the prefix must be a non-empty HTTP header name (letters, digits, - and _; not ending in -bin)")
            })?;
            if RESERVED.contains(&key.as_str()) || key.as_str().starts_with("grpc-") {
                return Err(refuse(
                    "this header belongs to the gRPC protocol and cannot be overridden",
                ));
            }
            let value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| refuse("the value must be visible ASCII (spaces and tabs allowed)"))?;
            Ok((key, value))
        })
        .collect()
}

/// Headers gRPC itself sets; replacing one breaks or silently changes every call.
const RESERVED: [&str; 4] = ["content-type", "te", "user-agent", "grpc-timeout"];
