//! Workload identities (SPIFFE) and the certificates that prove them.
//!
//! `ca` issues certificates (the built-in test root, a new root, or a CA loaded from Istio's plug-in files);
//! `manager` keeps one short-lived certificate per identity and renews it before expiry;
//! `tls_configs` caches the rustls configs built from each certificate.

mod ca;
mod ca_client;
mod manager;
mod spiffe;
mod tls_configs;

pub use ca::{certs_pem, CaError, LocalCa, ServingCert, ROOT_CERT_FILE, TEST_ROOT_WARNING};
pub use ca_client::{CaClient, CaClientError, IMPERSONATED_IDENTITY};
pub use manager::{CertState, CertificateSource, ManagerError, SecretManager, WorkloadCert};
pub use spiffe::{Identity, IdentityError};
pub(crate) use tls_configs::TlsConfigs;
