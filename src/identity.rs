//! Workload identities (SPIFFE) and the certificates that prove them.
//!
//! `ca` issues certificates (a throwaway root, or a CA loaded from Istio's plug-in files);
//! `manager` keeps one short-lived certificate per identity and renews it before expiry.

pub mod ca;
pub mod manager;
mod spiffe;

pub use ca::{CaError, LocalCa};
pub use manager::{ManagerError, SecretManager, WorkloadCert};
pub use spiffe::{Identity, IdentityError};
