//! The client side of the tunnel's two gRPC dependencies, istiod's xDS and CA: one way to build
//! a channel (TLS with a root from a file, like Istio's `XDS_ROOT_CA` / `CA_ROOT_CA`), one way to
//! attach the bearer token, and one way to turn a failure into a sentence an operator can act on.
//!
//! The token file is read on every call rather than once: Kubernetes rotates projected
//! service-account tokens in place, and a long-lived tunnel must pick up the new one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, AsciiMetadataKey, AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// Where a gRPC service is and how to prove who we are to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcTarget {
    /// `https://host:port` (or `http://` for a plaintext control plane, with a warning).
    pub address: String,
    /// PEM roots that sign the server's certificate; `None` uses the system's roots
    /// (Istio's `SYSTEM`).
    pub root_cert: Option<PathBuf>,
    /// Bearer token file; `None` sends no token (client certificates or no auth).
    pub token: Option<PathBuf>,
    /// Sent as the `ClusterID` header, as Istio's agents do.
    pub cluster_id: String,
    /// Extra metadata on every request (Istio's `XDS_HEADER_<name>` / `CA_HEADER_<name>`), for
    /// a control plane behind a gateway that routes or authenticates by header. Added before
    /// the token and cluster id, which win on a clash, as in ztunnel.
    pub headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// The name the server's certificate must carry, in place of the address's host
    /// (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`): for a control plane dialled by IP or through a
    /// load balancer whose address is not in its certificate. Also sent as SNI.
    pub tls_server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("{address:?} is not a usable gRPC address: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot read the root certificate {path} for {address}: {source}")]
    Root {
        address: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup for {address} failed: {reason}")]
    Tls { address: String, reason: String },
    #[error("cannot read the bearer token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bearer token in {path} is empty or not a valid header value")]
    BadToken { path: PathBuf },
}

/// How long connecting (TCP + TLS) may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive, so a control plane that vanished without a FIN is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl GrpcTarget {
    /// A channel that connects on first use and reconnects after failures by itself. Bad
    /// addresses and unreadable roots fail here, at start-up, not on the first request.
    pub(crate) fn channel(&self) -> Result<Channel, GrpcError> {
        let bad = |reason: String| GrpcError::Address {
            address: self.address.clone(),
            reason,
        };
        let uri: http::Uri = self
            .address
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let mut endpoint = Endpoint::from(uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        match uri.scheme_str() {
            Some("https") => {
                let mut tls = ClientTlsConfig::new();
                tls = match &self.root_cert {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|source| GrpcError::Root {
                            address: self.address.clone(),
                            path: path.clone(),
                            source,
                        })?;
                        tls.ca_certificate(Certificate::from_pem(pem))
                    }
                    None => tls.with_native_roots(),
                };
                if let Some(name) = &self.tls_server_name {
                    tls = tls.domain_name(name.clone());
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| GrpcError::Tls {
                    address: self.address.clone(),
                    reason: error_chain(&e),
                })?;
            }
            Some("http") => {
                tracing::warn!(address = %self.address, "plaintext gRPC: the control plane is not authenticated and the token is sent in the clear");
            }
            _ => return Err(bad("expected https://<host>:<port>".into())),
        }
        if uri.host().is_none() {
            return Err(bad("no host".into()));
        }
        Ok(endpoint.connect_lazy())
    }

    /// Adds the configured headers, then `authorization: Bearer <token>` (read now) and
    /// `ClusterID` to a request.
    pub(crate) fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), GrpcError> {
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        if let Some(path) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", bearer_header(path)?);
        }
        if let Ok(value) = self.cluster_id.parse() {
            request.metadata_mut().insert("clusterid", value);
        }
        Ok(())
    }
}

fn bearer_header(path: &Path) -> Result<MetadataValue<Ascii>, GrpcError> {
    let token = std::fs::read_to_string(path).map_err(|source| GrpcError::Token {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(GrpcError::BadToken {
            path: path.to_path_buf(),
        });
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| GrpcError::BadToken {
            path: path.to_path_buf(),
        })
}

/// One line naming what went wrong talking to `what` (e.g. "the control plane at https://…"):
/// rejected credentials, unreachable, or the server's own message, with the transport's cause
/// chain (connection refused, certificate errors) rather than tonic's generic "transport error".
pub(crate) fn explain(status: &Status, what: &str) -> String {
    let mut parts = vec![status.message().to_string()];
    if let Some(source) = std::error::Error::source(status) {
        push_causes(&mut parts, source);
    }
    let detail = parts.join(": ");
    match status.code() {
        Code::Unauthenticated => {
            format!("{what} rejected our credentials (UNAUTHENTICATED): {detail}")
        }
        Code::PermissionDenied => {
            format!("{what} refused the request (PERMISSION_DENIED): {detail}")
        }
        Code::Unavailable => format!("cannot reach {what} (UNAVAILABLE): {detail}"),
        Code::DeadlineExceeded => format!("{what} did not answer in time: {detail}"),
        code => format!("{what} failed the request ({code:?}): {detail}"),
    }
}

/// `e`, then each `source()` below it, joined with ": ", skipping repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    push_causes(&mut parts, e);
    parts.join(": ")
}

/// Appends `e` and its causes to `parts`, skipping any text already said (tonic and hyper
/// wrap the same cause several times: "tcp connect error: transport error: tcp connect error").
fn push_causes(parts: &mut Vec<String>, e: &(dyn std::error::Error + 'static)) {
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
}

#[cfg(test)]
mod tests;
