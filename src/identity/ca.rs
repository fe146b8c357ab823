//! An in-process certificate authority.
//!
//! Two uses: with `FAKE_CA=true` the tunnel signs with the built-in, public test root
//! ([`LocalCa::test_root`]), so every such tunnel trusts every other as ztunnel's do; otherwise
//! it can load Istio's plug-in CA files ([`LocalCa::load`]) so its certificates chain to
//! the same root as the rest of the mesh. Either way it signs CSRs for workload identities the way
//! istiod does: the identity comes from the caller, never from the CSR.
//!
//! One file per job: `files` is where a CA comes from and goes to (generate, load and check the
//! plug-in files, write them); `test_root` is the FAKE_CA root; `signing` is what it issues (workload leaves from CSRs, serving
//! certificates). PEM and DER are written by maintained crates (`pem`, `yasna`), never by hand.

mod files;
mod signing;
mod test_root;

pub use test_root::WARNING as TEST_ROOT_WARNING;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use pem::{EncodeConfig, LineEnding, Pem};
use rcgen::{Issuer, KeyPair};
use rustls::pki_types::CertificateDer;

/// Istio's plug-in CA file names (`cacerts` secret keys).
pub(crate) const CA_CERT_FILE: &str = "ca-cert.pem";
pub(crate) const CA_KEY_FILE: &str = "ca-key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub(crate) const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// How far issued certificates are back-dated, so peers with a slightly slow clock accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("required CA file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read CA file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not usable PEM: {reason}")]
    NotPem { path: PathBuf, reason: String },
    #[error("{path}: certificate cannot be parsed: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("{path} is not a CA certificate (basic constraints lack CA=true)")]
    NotCa { path: PathBuf },
    #[error("{path}: private key cannot be loaded: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{cert} (with {chain}) does not chain to a root in {root}: {reason}")]
    Untrusted {
        cert: PathBuf,
        chain: PathBuf,
        root: PathBuf,
        reason: String,
    },
    #[error("cannot write CA file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("generating the CA certificate failed: {0}")]
    Generate(rcgen::Error),
    #[error("certificate signing request rejected: {0}")]
    BadCsr(rcgen::Error),
    #[error("certificate lifetime must be positive and end before the year 10000, got {0:?}")]
    BadTtl(Duration),
    #[error("{san:?} is not a usable subject alternative name: {reason}")]
    BadSan { san: String, reason: String },
    #[error("signing a certificate for {identity} failed: {source}")]
    Sign {
        identity: String,
        source: rcgen::Error,
    },
}

/// A server certificate and its key, PEM encoded (what tonic's `Identity::from_pem` takes).
pub struct ServingCert {
    /// The leaf, then any intermediates; not the root.
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and panic messages.
        f.debug_struct("ServingCert")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .finish_non_exhaustive()
    }
}

/// An in-process CA: a signing key + certificate, the chain above it and the trusted roots.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the signing key, kept only so [`LocalCa::write`] can persist it.
    key_pem: String,
    signing_cert: CertificateDer<'static>,
    /// Certificates between an issued leaf and the root: the signing cert and any intermediates
    /// above it. Empty when the signing cert is itself a root.
    intermediates: Vec<CertificateDer<'static>>,
    /// Every certificate in `root-cert.pem` (more than one during a root rotation).
    roots: Vec<CertificateDer<'static>>,
    /// The root the intermediates end in; it closes every issued chain.
    chain_root: CertificateDer<'static>,
    trust_domain: Option<String>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The trust anchors peers' certificates must chain to.
    pub fn root_certs(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }

    /// `root-cert.pem` contents.
    pub fn root_pem(&self) -> String {
        certs_pem(&self.roots)
    }

    /// The trust domain this CA issues for, when known: set by [`LocalCa::generate`] and
    /// [`LocalCa::with_trust_domain`]. Plug-in CA files don't name one (Istio takes it from the
    /// mesh config), so a loaded CA has none until told.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// Records the trust domain a loaded CA serves, so signing services can refuse identities
    /// outside it.
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> LocalCa {
        self.trust_domain = Some(trust_domain.into());
        self
    }
}

/// Certificates as concatenated PEM blocks, each ending in a newline.
pub fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}

/// RFC 7468 PEM with `\n` line endings (the `pem` crate defaults to `\r\n`), 64 columns.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = EncodeConfig::new().set_line_ending(LineEnding::LF);
    pem::encode_config(&Pem::new(label, der), config)
}

#[cfg(test)]
mod tests;
