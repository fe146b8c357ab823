//! Certificates for the raw HBONE client: a CA loaded from the files `nodetunnel generate-ca`
//! writes (so its leaves chain to the root the tunnels trust), or a fresh root nobody trusts,
//! issuing a leaf for any SPIFFE URI the test asks for — including ones the mesh's own CA
//! would never sign.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::RawHboneError;

/// The plug-in CA files `generate-ca` writes (Istio's names).
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// Leaves are valid from a minute ago (clock skew between processes) for an hour.
const SKEW: Duration = Duration::from_secs(60);
const LIFETIME: Duration = Duration::from_secs(3600);

/// A CA that signs client certificates for the tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Sent after the leaf: the signing certificate and its intermediates, without the root.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

/// A certificate chain (leaf first) and its key, for the client side of TLS.
pub struct ClientCert {
    /// The SPIFFE URI in the leaf's SAN.
    pub identity: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl TestCa {
    /// The CA in `dir` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), the
    /// one the tunnels under test load or get their certificates from.
    pub fn load(dir: &Path) -> Result<TestCa, RawHboneError> {
        let read = |file: &str| {
            fs::read_to_string(dir.join(file))
                .map_err(|e| pki_error(format!("reading {}", dir.join(file).display()), e))
        };
        let key = KeyPair::from_pem(&read(CA_KEY)?)
            .map_err(|e| pki_error(format!("parsing {CA_KEY} (PKCS#8 expected)"), e))?;
        let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT)?, key)
            .map_err(|e| pki_error(format!("parsing {CA_CERT}"), e))?;
        let roots = certs(&read(ROOT_CERT)?, ROOT_CERT)?;
        let intermediates = certs(&read(CERT_CHAIN)?, CERT_CHAIN)?
            .into_iter()
            .filter(|c| !roots.contains(c))
            .collect();
        Ok(TestCa {
            issuer,
            intermediates,
            roots,
        })
    }

    /// A new self-signed root (ECDSA P-256) that no tunnel trusts.
    pub fn generate(name: &str) -> Result<TestCa, RawHboneError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| pki_error("generating a root key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - SKEW).into();
        params.not_after = (now + LIFETIME).into();
        let root = params
            .self_signed(&key)
            .map_err(|e| pki_error("self-signing the root", e))?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            intermediates: Vec::new(),
            roots: vec![root.der().clone()],
        })
    }

    /// The roots this CA's leaves chain to (what a peer must trust to accept them).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// A leaf with `spiffe_uri` as its only SAN, shaped as Istio's workload certificates are
    /// (no subject, client and server auth), with a fresh P-256 key. Nothing checks that the
    /// URI is one this CA should sign: that is the point.
    pub fn issue(&self, spiffe_uri: &str) -> Result<ClientCert, RawHboneError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| pki_error("generating a leaf key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = spiffe_uri
            .to_string()
            .try_into()
            .map_err(|e| pki_error(format!("SAN {spiffe_uri:?}"), e))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - SKEW).into();
        params.not_after = (now + LIFETIME).into();
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error(format!("signing a leaf for {spiffe_uri}"), e))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(ClientCert {
            identity: spiffe_uri.to_string(),
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn certs(pem: &str, file: &str) -> Result<Vec<CertificateDer<'static>>, RawHboneError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pki_error(format!("parsing {file}"), e))?;
    if certs.is_empty() {
        return Err(pki_error(file, "no certificate in the file"));
    }
    Ok(certs)
}

fn pki_error(what: impl Into<String>, reason: impl std::fmt::Display) -> RawHboneError {
    RawHboneError::Pki {
        what: what.into(),
        reason: reason.to_string(),
    }
}
