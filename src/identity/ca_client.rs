//! The gRPC client for Istio's `IstioCertificateService/CreateCertificate` (istiod, or
//! `nodetunnel-control`).
//!
//! A node tunnel holds certificates for pods that are not itself, so every request names the
//! workload in the metadata struct under `ImpersonatedIdentity` — the key istiod reads
//! (`security.ImpersonatedIdentity`) and ztunnel sends, as a string value holding the SPIFFE
//! URI. The CA decides whether this caller may act for that workload; we only ask.

use std::collections::BTreeMap;
use std::time::Duration;

use nodetunnel_proto::istio::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use nodetunnel_proto::istio::auth::IstioCertificateRequest;
use prost_types::value::Kind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tonic::transport::Channel;

use super::Identity;
use crate::grpc::{explain, GrpcError, GrpcTarget};

/// Metadata key under which the requested workload identity travels (Istio's name).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// How long one CreateCertificate call may take, connecting included. Bounded so a CA that
/// accepts connections but never answers turns into an error the manager backs off from,
/// rather than a fetch that hangs a pod's first connection forever.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The call failed; the text comes from `grpc::explain` and names the CA and the cause.
    #[error("{0}")]
    Rpc(String),
    #[error("the CA at {address} returned an unusable response: {reason}")]
    BadResponse { address: String, reason: String },
}

/// Talks to `CA_ADDRESS`. Connects lazily and reconnects by itself; cheap to clone.
#[derive(Debug, Clone)]
pub struct CaClient {
    target: GrpcTarget,
    client: IstioCertificateServiceClient<Channel>,
    timeout: Duration,
}

impl CaClient {
    /// Builds the channel now, so a bad address or an unreadable root file fails at start-up;
    /// the CA itself is first contacted by [`CaClient::sign`].
    pub fn new(target: GrpcTarget) -> Result<CaClient, CaClientError> {
        let channel = target.channel()?;
        Ok(CaClient {
            client: IstioCertificateServiceClient::new(channel),
            target,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Replaces `DEFAULT_TIMEOUT` as the limit for one call.
    pub fn with_timeout(mut self, timeout: Duration) -> CaClient {
        self.timeout = timeout;
        self
    }

    /// Where this client sends requests.
    pub(crate) fn address(&self) -> &str {
        &self.target.address
    }

    /// Sends `csr_pem` for `id` (as `ImpersonatedIdentity`), asking for `ttl` (whole seconds,
    /// at least one); returns the chain leaf first, root last, as the CA sent it.
    ///
    /// The token is read from its file on every call, so a rotated token is picked up.
    pub async fn sign(
        &self,
        csr_pem: &str,
        id: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: validity_seconds(ttl),
            metadata: Some(impersonation_metadata(id)),
        });
        // The header tells the CA when to give up; the local timeout also covers a CA that
        // ignores it, or never completes the TLS handshake.
        request.set_timeout(self.timeout);
        self.target.authorize(&mut request)?;
        let mut client = self.client.clone();
        let call = client.create_certificate(request);
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        let response = result
            .map_err(|status| {
                CaClientError::Rpc(explain(
                    &status,
                    &format!("the CA at {}", self.target.address),
                ))
            })?
            .into_inner();
        parse_chain(&response.cert_chain).map_err(|reason| CaClientError::BadResponse {
            address: self.target.address.clone(),
            reason,
        })
    }
}

/// `{"ImpersonatedIdentity": "<spiffe id>"}` as a protobuf Struct.
fn impersonation_metadata(id: &Identity) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(Kind::StringValue(id.to_string())),
    };
    prost_types::Struct {
        fields: BTreeMap::from([(IMPERSONATED_IDENTITY.to_string(), value)]),
    }
}

/// The request's `validity_duration`: seconds, rounded up so a sub-second TTL doesn't become 0
/// (which a CA reads as "use your default").
fn validity_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Decodes `cert_chain`. istiod sends one certificate per entry, but older CAs sent the
/// intermediates or roots concatenated in one entry, so every entry may hold several PEM blocks.
fn parse_chain(entries: &[String]) -> Result<Vec<CertificateDer<'static>>, String> {
    if entries.is_empty() {
        return Err("cert_chain is empty".into());
    }
    let mut chain = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let certs = CertificateDer::pem_slice_iter(entry.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cert_chain[{index}] is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!("cert_chain[{index}] holds no CERTIFICATE block"));
        }
        chain.extend(certs);
    }
    Ok(chain)
}

#[cfg(test)]
mod tests;
