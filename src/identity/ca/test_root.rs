//! `FAKE_CA=true`: one fixed, public, test-only root built into the binary.
//!
//! ztunnel's `FAKE_CA` signs every certificate with one built-in test root, so any number of
//! tunnels started with it in a test setup trust each other. A root generated per process would
//! break exactly that (two tunnels could never talk), so ours is fixed too. Its private key is in
//! this repository for anyone to read: a certificate from it proves nothing, which is why the
//! tunnel warns loudly at start-up whenever it is in use. The root is our own (ECDSA P-256,
//! valid for 100 years, subject saying it is not for production); it is not ztunnel's, so a
//! ztunnel and a nodetunnel both on `FAKE_CA` do not trust each other.

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{CaError, LocalCa};

/// The root certificate (`openssl req -x509`, P-256, CA:TRUE, keyCertSign + cRLSign).
const ROOT_CERT_PEM: &str = include_str!("test_root/root-cert.pem");
/// Its PKCS#8 private key: public on purpose, see the module docs.
const ROOT_KEY_PEM: &str = include_str!("test_root/ca-key.pem");

/// What errors name instead of a file path.
const SOURCE: &str = "<built-in FAKE_CA test root>";

/// The line the tunnel logs at start-up when the test root is in use.
pub const WARNING: &str = "FAKE_CA=true: every certificate is signed by the built-in TEST root, \
     whose private key is public; any tunnel with FAKE_CA trusts any other and identities prove \
     nothing. Never use this outside tests";

impl LocalCa {
    /// The built-in test root, issuing for `trust_domain` (FAKE_CA). Every call, in every
    /// process, yields the same root.
    pub fn test_root(trust_domain: &str) -> Result<LocalCa, CaError> {
        let bad = |reason: String| CaError::BadCert {
            path: SOURCE.into(),
            reason,
        };
        let cert = CertificateDer::from_pem_slice(ROOT_CERT_PEM.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let key = KeyPair::from_pem(ROOT_KEY_PEM).map_err(|e| CaError::BadKey {
            path: SOURCE.into(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad(e.to_string()))?;
        Ok(LocalCa {
            issuer,
            key_pem: ROOT_KEY_PEM.to_string(),
            signing_cert: cert.clone(),
            intermediates: Vec::new(),
            roots: vec![cert.clone()],
            chain_root: cert,
            trust_domain: Some(trust_domain.to_string()),
        })
    }
}
