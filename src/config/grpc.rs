//! A gRPC service the tunnel dials (the control plane, the CA): its address, TLS root and
//! token, each from its own variable.

use std::path::PathBuf;

use super::env::{invalid, Env};
use super::ConfigError;
use crate::grpc::GrpcTarget;

/// Istio's defaults: the mounted istiod root and the projected service-account token.
pub(crate) const DEFAULT_ROOT_CA: &str = "/var/run/secrets/istio/root-cert.pem";
pub(crate) const DEFAULT_AUTH_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

/// The variables that describe one gRPC service.
pub(super) struct GrpcVars {
    /// Its address (scheme optional, `https://` assumed as ztunnel does).
    pub(super) address: &'static str,
    /// Its TLS root: a file, or `SYSTEM` for the system roots; Istio's mounted root by default.
    pub(super) root_ca: &'static str,
    /// Its bearer token file: Istio's projected token by default, used only if present; an
    /// explicitly named file must exist.
    pub(super) auth_token: &'static str,
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
    Ok(GrpcTarget {
        address,
        root_cert,
        token,
        cluster_id: cluster_id.to_string(),
    })
}
