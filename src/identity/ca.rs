//! An in-process certificate authority.
//!
//! Two uses: with `FAKE_CA=true` the tunnel mints a throwaway root at start-up ([`LocalCa::generate`]);
//! otherwise it can load Istio's plug-in CA files ([`LocalCa::load`]) so its certificates chain to
//! the same root as the rest of the mesh. Either way it signs CSRs for workload identities the way
//! istiod does: the identity comes from the caller, never from the CSR.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Identity;

/// Istio's plug-in CA file names (`cacerts` secret keys).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

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
    /// A throwaway self-signed ECDSA P-256 root for `trust_domain` (FAKE_CA).
    pub fn generate(trust_domain: &str) -> Result<LocalCa, CaError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "nodetunnel");
        dn.push(
            DnType::CommonName,
            format!("nodetunnel root for {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        let der = cert.der().clone();
        Ok(LocalCa {
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            signing_cert: der.clone(),
            intermediates: Vec::new(),
            roots: vec![der.clone()],
            chain_root: der,
            trust_domain: Some(trust_domain.to_string()),
        })
    }

    /// Loads Istio's plug-in CA files from `dir`; see the `*_FILE` constants.
    ///
    /// `ca-key.pem` may be PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`): Istio's
    /// samples and `openssl` tooling produce the latter two, rcgen+ring only take PKCS#8, so they
    /// are re-wrapped. The files are checked together (key matches cert, chain reaches a root) so
    /// a broken secret fails at start-up naming the file, not at the first handshake.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_path = dir.join(CERT_CHAIN_FILE);

        let signing_cert = read_certs(&cert_path)?.remove(0);
        let parsed = parse_cert(&cert_path, &signing_cert)?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa { path: cert_path });
        }
        let key = load_key(&key_path, &cert_path, &parsed)?;
        let key_pem = key.serialize_pem();
        let issuer =
            Issuer::from_ca_cert_der(&signing_cert, key).map_err(|e| CaError::BadCert {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;

        let roots = read_certs(&root_path)?;
        for root in &roots {
            parse_cert(&root_path, root)?;
        }
        let chain = match fs::metadata(&chain_path) {
            Ok(_) => read_certs(&chain_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CaError::Read {
                    path: chain_path,
                    source,
                })
            }
        };
        // Istio's cert-chain.pem normally starts with ca-cert and may or may not end with the
        // root; accept both layouts by rebuilding "signing cert, intermediates" without roots.
        let mut intermediates = Vec::new();
        for cert in std::iter::once(&signing_cert).chain(chain.iter()) {
            parse_cert(&chain_path, cert)?;
            if !roots.contains(cert) && !intermediates.contains(cert) {
                intermediates.push(cert.clone());
            }
        }
        let top = intermediates.last().unwrap_or(&signing_cert);
        let chain_root = issuing_root(top, &roots).clone();

        let ca = LocalCa {
            issuer,
            key_pem,
            signing_cert,
            intermediates,
            roots,
            chain_root,
            trust_domain: None,
        };
        ca.check_chain().map_err(|reason| CaError::Untrusted {
            cert: cert_path,
            chain: chain_path,
            root: root_path,
            reason,
        })?;
        Ok(ca)
    }

    /// Writes the four plug-in files to `dir` (created if needed), the key with mode 0600, so
    /// several tunnels (or tests) can share one root via [`LocalCa::load`].
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let chain: Vec<_> = self
            .intermediates
            .iter()
            .chain(self.intermediates.is_empty().then_some(&self.signing_cert))
            .cloned()
            .collect();
        write_file(
            &dir.join(CA_CERT_FILE),
            &certs_pem(std::slice::from_ref(&self.signing_cert)),
            0o644,
        )?;
        write_file(&dir.join(CERT_CHAIN_FILE), &certs_pem(&chain), 0o644)?;
        write_file(&dir.join(ROOT_CERT_FILE), &self.root_pem(), 0o644)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)
    }

    /// Signs `csr_der` for `identity`, valid from one minute ago for `ttl`.
    ///
    /// Only the CSR's public key (and its self-signature) is used: the subject and SANs it asks
    /// for are ignored, because the caller has already decided which identity the requester may
    /// hold. Returns leaf, intermediates, root — Istio's `cert_chain` order.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let now = SystemTime::now();
        let not_after = not_after(now, ttl)?;
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(CaError::BadCsr)?;
        let sign_err = |source| CaError::Sign {
            identity: identity.to_string(),
            source,
        };
        let uri = identity.to_string().try_into().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; rcgen then marks the SAN extension critical (RFC 5280).
        params.distinguished_name = DistinguishedName::new();
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
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(sign_err)?;

        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.chain_root.clone());
        Ok(chain)
    }

    /// The trust anchors peers' certificates must chain to.
    pub fn root_certs(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }

    /// `root-cert.pem` contents.
    pub fn root_pem(&self) -> String {
        certs_pem(&self.roots)
    }

    /// A TLS server certificate for a service that workloads reach over the mesh's own PKI
    /// (the control plane): clients verify it with the same `root-cert.pem` they already trust
    /// for workload certificates, so no second PKI has to be distributed.
    ///
    /// Each entry of `sans` becomes an IP address SAN if it parses as one, else a DNS name;
    /// the first also becomes the subject CN for humans reading the certificate. The key is a
    /// fresh P-256 key. The chain is the leaf and the intermediates, never the root: clients
    /// have it, and a server sending it would only hide a client trusting the wrong root.
    pub fn issue_serving_cert(
        &self,
        sans: &[String],
        ttl: Duration,
    ) -> Result<ServingCert, CaError> {
        let now = SystemTime::now();
        let not_after = not_after(now, ttl)?;
        let Some(first) = sans.first() else {
            return Err(CaError::BadSan {
                san: String::new(),
                reason: "a serving certificate needs at least one DNS name or IP address".into(),
            });
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|san| serving_san(san))
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let sign_err = |source| CaError::Sign {
            identity: format!("serving certificate for {}", sans.join(", ")),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(ServingCert {
            cert_chain_pem: certs_pem(&chain),
            key_pem: key.serialize_pem(),
        })
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

    /// Issues a throwaway leaf and verifies it against the roots with webpki, exactly as a peer
    /// would, so a CA whose files don't fit together is refused when loaded.
    fn check_chain(&self) -> Result<(), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| e.to_string())?;
        let probe = Identity::new("probe.invalid", "probe", "probe");
        let chain = self
            .sign_csr(csr.der(), &probe, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let mut store = rustls::RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(|e| e.to_string())?;
        }
        let leaf =
            rustls::server::ParsedCertificate::try_from(&chain[0]).map_err(|e| e.to_string())?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &store,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())
    }
}

/// `now + ttl`, refused when `ttl` is zero or the end lies past 9999-12-31 (X.509's last
/// representable time): beyond it `SystemTime` arithmetic and the conversion rcgen does panic,
/// and `ttl` can come from a request (`validity_duration`) or a variable (`SECRET_TTL`).
fn not_after(now: SystemTime, ttl: Duration) -> Result<SystemTime, CaError> {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    now.checked_add(ttl)
        .filter(|end| {
            !ttl.is_zero()
                && end
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .is_ok_and(|since| since <= LAST)
        })
        .ok_or(CaError::BadTtl(ttl))
}

/// An IP address SAN if `san` parses as one, else a DNS name (which rcgen checks is IA5).
fn serving_san(san: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if san.is_empty() || san.contains(char::is_whitespace) {
        return Err(CaError::BadSan {
            san: san.to_string(),
            reason: "neither an IP address nor a DNS name".into(),
        });
    }
    let name = san.try_into().map_err(|e: rcgen::Error| CaError::BadSan {
        san: san.to_string(),
        reason: e.to_string(),
    })?;
    Ok(SanType::DnsName(name))
}

/// A positive random serial of 16 bytes (RFC 5280 allows up to 20).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the encoding stays 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn read_file(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CaError::Missing {
            path: path.to_path_buf(),
        },
        _ => CaError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// All CERTIFICATE blocks of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::NotPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::NotPem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn parse_cert<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CaError::BadCert {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Loads the signing key and checks it belongs to `cert` (parsed from `cert_path`).
fn load_key(
    key_path: &Path,
    cert_path: &Path,
    cert: &X509Certificate<'_>,
) -> Result<KeyPair, CaError> {
    let bytes = read_file(key_path)?;
    let bad_key = |reason: String| CaError::BadKey {
        path: key_path.to_path_buf(),
        reason,
    };
    let mismatch = || CaError::KeyMismatch {
        key: key_path.to_path_buf(),
        cert: cert_path.to_path_buf(),
    };
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| CaError::NotPem {
        path: key_path.to_path_buf(),
        reason: format!("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block ({e})"),
    })?;
    let spki = cert.public_key();
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs8_wrap(
            &der_tlv(0x30, &[OID_RSA_ENCRYPTION, &[0x05, 0x00]].concat()),
            k.secret_pkcs1_der(),
        ),
        PrivateKeyDer::Sec1(k) => {
            // SEC1 may omit the curve; the certificate's SPKI names it (and must, to match).
            if spki.algorithm.algorithm.as_bytes() != &OID_EC_PUBLIC_KEY[2..] {
                return Err(mismatch());
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| bad_key("certificate's EC key names no curve".into()))?;
            let alg = [OID_EC_PUBLIC_KEY, &der_tlv(0x06, curve.as_bytes())].concat();
            pkcs8_wrap(&der_tlv(0x30, &alg), k.secret_sec1_der())
        }
        _ => return Err(bad_key("unsupported private key encoding".into())),
    };
    let key =
        KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8)).map_err(|e| bad_key(e.to_string()))?;
    if key.public_key_raw() != spki.subject_public_key.data.as_ref() {
        return Err(mismatch());
    }
    Ok(key)
}

/// DER of `1.2.840.10045.2.1` (id-ecPublicKey) with its tag and length.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of `1.2.840.113549.1.1.1` (rsaEncryption) with its tag and length.
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// PKCS#8 `PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }` around a raw key.
fn pkcs8_wrap(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let body = [
        &[0x02, 0x01, 0x00][..],
        algorithm,
        &der_tlv(0x04, private_key),
    ]
    .concat();
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The root whose subject is `cert`'s issuer; the first root if none matches (the trust check
/// in [`LocalCa::load`] then reports the real problem).
fn issuing_root<'a>(
    cert: &CertificateDer<'_>,
    roots: &'a [CertificateDer<'static>],
) -> &'a CertificateDer<'static> {
    let issuer = X509Certificate::from_der(cert).map(|(_, c)| c.issuer().as_raw().to_vec());
    roots
        .iter()
        .find(|root| match (&issuer, X509Certificate::from_der(root)) {
            (Ok(issuer), Ok((_, root))) => root.subject().as_raw() == issuer.as_slice(),
            _ => false,
        })
        .unwrap_or(&roots[0])
}

/// Certificates as concatenated PEM blocks, each ending in a newline.
pub fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}

/// RFC 7468 PEM: base64 in 64-column lines between BEGIN/END markers.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // `mode` only applies to new files; an existing key file must not stay world-readable.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests;
