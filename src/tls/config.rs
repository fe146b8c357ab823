//! Building the client and server configs: TLS 1.3 only, two AES-GCM suites, ALPN `h2`, the
//! [`provider`] passed explicitly (no process-wide default), no session resumption. Each config
//! is built once per certificate and cached with it.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig};

use super::verify::{ClientIdentityVerifier, ServerIdentityVerifier};
use super::TlsError;
use crate::identity::{Identity, WorkloadCert};

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The ring provider cut down to the suites Istio's ztunnel allows. ring rather than aws-lc-rs:
/// on CPUs with VAES but no AVX-512 (AMD Zen 3, the bench machine) ring's AES-GCM uses VAES
/// with AVX2 while aws-lc-rs 1.19 falls back to AES-NI, and seals 16 KiB records 1.8x slower
/// (issue 14's note); where AVX-512 is present aws-lc-rs is said to be faster.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..ring::default_provider()
    })
}

/// The signature algorithms of [`provider`], for checking a chain outside a handshake (CA
/// responses, certificate files).
pub(crate) fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    ring::default_provider().signature_verification_algorithms
}

/// A client config presenting `cert` and accepting only a server whose identity is in
/// `expected_server`. Connect with any `ServerName` (e.g. the destination IP): it is not checked.
///
/// Built once per certificate and expected set, then shared (see [`TlsConfigs`]); a renewed
/// certificate gets new configs. Resumption is off: a resumed session skips certificate
/// verification.
///
/// [`TlsConfigs`]: crate::identity::TlsConfigs
pub fn client_config(
    cert: &WorkloadCert,
    expected_server: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    cert.tls_configs()
        .client(expected_server, |expected| build_client(cert, expected))
}

fn build_client(
    cert: &WorkloadCert,
    expected_server: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = ServerIdentityVerifier {
        roots: cert.roots.clone(),
        expected: expected_server,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A server config presenting `cert` and requiring a client certificate that chains to
/// `cert.roots` and names an identity in `cert.identity`'s trust domain.
///
/// Built once per certificate, then shared (see [`TlsConfigs`]).
///
/// [`TlsConfigs`]: crate::identity::TlsConfigs
pub fn server_config(cert: &WorkloadCert) -> Result<Arc<ServerConfig>, TlsError> {
    cert.tls_configs().server(|| build_server(cert))
}

fn build_server(cert: &WorkloadCert) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(cert.roots.clone(), provider.clone())
        .build()?;
    let verifier = ClientIdentityVerifier {
        inner: webpki,
        trust_domain: cert.identity.trust_domain.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
