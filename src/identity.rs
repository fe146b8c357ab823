//! Workload identities (SPIFFE) and the certificates that prove them.
//!
//! `ca` issues certificates (a throwaway root, or a CA loaded from Istio's plug-in files);
//! `manager` keeps one short-lived certificate per identity and renews it before expiry;
//! `tls_configs` caches the rustls configs built from each certificate.

pub mod ca;
pub mod ca_client;
pub mod manager;
mod spiffe;
mod tls_configs;

pub use ca::{CaError, LocalCa, ServingCert};
pub use ca_client::{CaClient, CaClientError};
pub use manager::{ManagerError, SecretManager, WorkloadCert};
pub use spiffe::{Identity, IdentityError};
pub use tls_configs::TlsConfigs;
