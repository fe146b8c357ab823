//! SKELETON (helper-ca): gRPC client for Istio's `IstioCertificateService/CreateCertificate`.

use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::Identity;
use crate::grpc::{GrpcError, GrpcTarget};

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("{0}")]
    Rpc(String),
    #[error("the CA at {address} returned an unusable response: {reason}")]
    BadResponse { address: String, reason: String },
}

/// Talks to `CA_ADDRESS`. Connects lazily and reconnects by itself.
#[derive(Debug, Clone)]
pub struct CaClient {
    target: GrpcTarget,
}

impl CaClient {
    pub fn new(target: GrpcTarget) -> Result<CaClient, CaClientError> {
        Ok(CaClient { target })
    }

    /// Sends `csr_pem` for `id` (as `ImpersonatedIdentity`); returns the chain leaf first,
    /// root last.
    pub async fn sign(
        &self,
        csr_pem: &str,
        id: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let _ = (csr_pem, id, ttl, &self.target);
        unimplemented!("skeleton")
    }
}
