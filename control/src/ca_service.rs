//! The control plane's `IstioCertificateService`: signs workload certificates with a
//! [`LocalCa`] for callers the [`Authenticator`] accepts.
//!
//! Which identity a certificate carries is decided here, never taken from the CSR: a token
//! caller (a node tunnel) names the workload in the `ImpersonatedIdentity` metadata, as Istio's
//! ztunnel does; a certificate caller gets its own identity. Either way the identity must belong
//! to some workload of the current mesh, and a token caller only gets identities of workloads
//! scheduled on the node its token is bound to — istiod's rule for ztunnel — so a leaked token
//! speaks for one node's workloads, not for the whole mesh.
//!
//! The response lists the leaf, the intermediates and the root, one certificate per entry, each
//! PEM with a trailing newline — the layout istiod produces and ztunnel expects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_proto::istio::auth::istio_certificate_service_server::IstioCertificateService;
use nodetunnel_proto::istio::auth::{IstioCertificateRequest, IstioCertificateResponse};
use prost_types::value::Kind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateSigningRequestDer;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Caller};
use nodetunnel::identity::certs_pem;
use nodetunnel::identity::IMPERSONATED_IDENTITY;
use nodetunnel::identity::{CaError, Identity, LocalCa};

/// Lifetime when the request asks for none (istiod's default workload TTL).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where the mesh runs an identity: `None` when no workload runs as it, else the nodes its
/// workloads are scheduled on (empty when none names a node).
pub type Placement = Arc<dyn Fn(&Identity) -> Option<BTreeSet<String>> + Send + Sync>;

pub struct CaService {
    ca: Arc<LocalCa>,
    auth: Arc<Authenticator>,
    placement: Placement,
    max_ttl: Duration,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("ca", &self.ca)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl CaService {
    /// `placement` is asked for every request (so it sees the mesh as it is now: a pod that
    /// moved to another node moves its identity with it); `max_ttl` caps the lifetime a caller
    /// may ask for.
    ///
    /// The CA's trust domain ([`LocalCa::trust_domain`]) bounds what may be signed; a CA loaded
    /// from plug-in files has none unless set with [`LocalCa::with_trust_domain`], and then only
    /// `placement` limits the identities.
    pub fn new(
        ca: Arc<LocalCa>,
        auth: Arc<Authenticator>,
        placement: Placement,
        max_ttl: Duration,
    ) -> CaService {
        if ca.trust_domain().is_none() {
            tracing::warn!("the CA has no trust domain set; only the mesh's workload list limits which identities it signs");
        }
        CaService {
            ca,
            auth,
            placement,
            max_ttl,
        }
    }

    /// Everything after authentication, separate so tests can drive it without TLS.
    #[allow(clippy::result_large_err)]
    fn sign(
        &self,
        caller: &Caller,
        request: IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        let identity = self.identity_for(caller, &request)?;
        let ttl = self.ttl(request.validity_duration);
        let csr =
            CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes()).map_err(|e| {
                Status::invalid_argument(format!("csr is not a PEM CERTIFICATE REQUEST: {e}"))
            })?;
        let chain = self
            .ca
            .sign_csr(csr.as_ref(), &identity, ttl)
            .map_err(|e| match e {
                CaError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                other => {
                    tracing::error!(%identity, error = %other, "signing failed");
                    Status::internal(format!("signing failed: {other}"))
                }
            })?;
        tracing::info!(caller = %caller, %identity, ?ttl, "issued a workload certificate");
        Ok(IstioCertificateResponse {
            cert_chain: chain
                .iter()
                .map(|cert| certs_pem(std::slice::from_ref(cert)) + "\n")
                .collect(),
            root_cert: None,
        })
    }

    /// The identity to certify: `ImpersonatedIdentity` if sent, else a certificate caller's own.
    ///
    /// A certificate caller may only ask for its own identity: a workload certificate proves
    /// one workload, and letting it name others would turn any leaked workload key into a key
    /// for the whole mesh. Acting for other workloads is what node tunnels' tokens are for, and
    /// a token acts only for the workloads on its node.
    #[allow(clippy::result_large_err)]
    fn identity_for(
        &self,
        caller: &Caller,
        request: &IstioCertificateRequest,
    ) -> Result<Identity, Status> {
        let requested = impersonated_identity(request)?;
        let identity = match (caller, requested) {
            (_, Some(text)) => text.parse::<Identity>().map_err(|e| {
                Status::invalid_argument(format!("{IMPERSONATED_IDENTITY} is not usable: {e}"))
            })?,
            (Caller::Certificate { identity }, None) => identity.clone(),
            (Caller::Token { .. }, None) => {
                return Err(Status::invalid_argument(format!(
                    "a token caller must name the workload in the request metadata ({IMPERSONATED_IDENTITY})"
                )))
            }
        };
        if let Caller::Certificate { identity: own } = caller {
            if *own != identity {
                return Err(Status::permission_denied(format!(
                    "a client certificate for {own} may only request its own identity, not {identity}"
                )));
            }
        }
        if let Some(trust_domain) = self.ca.trust_domain() {
            if identity.trust_domain != trust_domain {
                return Err(Status::permission_denied(format!(
                    "{identity} is outside this CA's trust domain {trust_domain:?}"
                )));
            }
        }
        let Some(nodes) = (self.placement)(&identity) else {
            return Err(Status::permission_denied(format!(
                "no workload in the mesh runs as {identity}"
            )));
        };
        if let Caller::Token { label, node } = caller {
            if !nodes.contains(node) {
                return Err(Status::permission_denied(format!(
                    "token {label:?} is bound to node {node:?}, and no workload on {node:?} runs as \
                     {identity} ({})",
                    where_it_runs(&nodes)
                )));
            }
        }
        Ok(identity)
    }

    /// `validity_duration` seconds, defaulting when not positive, capped at `max_ttl`.
    fn ttl(&self, requested: i64) -> Duration {
        let ttl = u64::try_from(requested)
            .ok()
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_TTL, Duration::from_secs);
        ttl.min(self.max_ttl)
    }
}

/// The nodes of a refused identity, for the operator reading the refusal (a token caller sees
/// the whole mesh over xDS anyway).
fn where_it_runs(nodes: &BTreeSet<String>) -> String {
    if nodes.is_empty() {
        return "its workloads name no node".to_string();
    }
    let quoted: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    format!("its workloads are on {}", quoted.join(", "))
}

/// The `ImpersonatedIdentity` metadata value, if present and non-empty.
#[allow(clippy::result_large_err)]
fn impersonated_identity(request: &IstioCertificateRequest) -> Result<Option<&str>, Status> {
    let Some(value) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s)),
        _ => Err(Status::invalid_argument(format!(
            "{IMPERSONATED_IDENTITY} must be a string holding a SPIFFE identity"
        ))),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.auth.authenticate(&request).inspect_err(|status| {
            tracing::info!(remote = ?request.remote_addr(), reason = status.message(), "refused a certificate request");
        })?;
        let result = self.sign(&caller, request.into_inner());
        if let Err(status) = &result {
            tracing::info!(caller = %caller, code = ?status.code(), reason = status.message(), "refused a certificate request");
        }
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests;
