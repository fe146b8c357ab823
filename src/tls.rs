//! rustls configurations for HBONE: mutual TLS 1.3 between SPIFFE identities.
//!
//! Peers authenticate by the URI SAN of their leaf certificate, never by DNS name or IP:
//! the client checks the server is one of the identities it expects to reach (`verify`),
//! the server accepts any client of its own trust domain and leaves the decision of *who*
//! may connect to authorization. `config` builds the rustls configs around those checks.

mod config;
mod verify;

#[cfg(test)]
mod tests;

pub(crate) use config::signature_algorithms;
pub use config::{client_config, server_config};
pub use verify::peer_identity;

use crate::identity::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("building the TLS config failed: {0}")]
    Config(#[from] rustls::Error),
    #[error("building the client certificate verifier failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the peer certificate carries no spiffe:// URI SAN")]
    NoSpiffeIdentity,
    #[error("the peer certificate carries several spiffe:// URI SANs: {0:?}")]
    MultipleIdentities(Vec<String>),
    #[error("the peer certificate's identity is malformed: {0}")]
    BadIdentity(#[from] IdentityError),
    #[error("server presented identity {presented}, expected {}", one_of(expected))]
    UnexpectedServer {
        expected: Vec<Identity>,
        presented: Identity,
    },
    #[error("client presented identity {presented}, which is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        trust_domain: String,
        presented: Identity,
    },
}

/// `a`, or `one of [a, b]`, for error messages.
fn one_of(ids: &[Identity]) -> String {
    match ids {
        [one] => one.to_string(),
        _ => {
            let list: Vec<String> = ids.iter().map(Identity::to_string).collect();
            format!("one of [{}]", list.join(", "))
        }
    }
}
