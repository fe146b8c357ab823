//! Where a CA comes from and goes to: a newly generated root, Istio's plug-in CA files
//! (loaded and checked together, so a broken secret fails at start-up naming the file), and
//! writing those files back so several processes can share one root.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use x509_parser::oid_registry::{Oid, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::{FromDer, X509Certificate};
use yasna::models::ObjectIdentifier;

use super::signing::random_serial;
use super::{
    certs_pem, CaError, LocalCa, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CLOCK_SKEW,
    ROOT_CERT_FILE,
};
use crate::identity::Identity;

impl LocalCa {
    /// A new self-signed ECDSA P-256 root for `trust_domain` (`nodetunnel generate-ca`, tests).
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
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &store,
            &chain[1..],
            UnixTime::now(),
            crate::tls::signature_algorithms().all,
        )
        .map_err(|e| e.to_string())
    }
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
        PrivateKeyDer::Pkcs1(k) => {
            pkcs8_wrap(KeyAlgorithm::Rsa, k.secret_pkcs1_der()).map_err(|e| bad_key(e.into()))?
        }
        PrivateKeyDer::Sec1(k) => {
            // SEC1 may omit the curve; the certificate's SPKI names it (and must, to match).
            if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
                return Err(mismatch());
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| bad_key("certificate's EC key names no curve".into()))?;
            pkcs8_wrap(KeyAlgorithm::Ec { curve: &curve }, k.secret_sec1_der())
                .map_err(|e| bad_key(e.into()))?
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

/// The algorithm a bare (PKCS#1 or SEC1) private key is for, as its PKCS#8 wrapper names it.
enum KeyAlgorithm<'a> {
    /// `rsaEncryption`, parameters NULL (RFC 8017).
    Rsa,
    /// `id-ecPublicKey` with the named curve (RFC 5480).
    Ec { curve: &'a Oid<'a> },
}

/// Wraps a PKCS#1 or SEC1 key as PKCS#8 `PrivateKeyInfo { version 0, algorithm, privateKey }`
/// (RFC 5208): Istio's samples and `openssl` produce those encodings, but rcgen on ring loads
/// only PKCS#8. The DER is written with yasna (rcgen's own DER writer).
fn pkcs8_wrap(algorithm: KeyAlgorithm<'_>, private_key: &[u8]) -> Result<Vec<u8>, &'static str> {
    let unrepresentable = "the key's algorithm identifier has an arc beyond 64 bits";
    let (oid, curve) = match algorithm {
        KeyAlgorithm::Rsa => (&OID_PKCS1_RSAENCRYPTION, None),
        KeyAlgorithm::Ec { curve } => (
            &OID_KEY_TYPE_EC_PUBLIC_KEY,
            Some(yasna_oid(curve).ok_or(unrepresentable)?),
        ),
    };
    let oid = yasna_oid(oid).ok_or(unrepresentable)?;
    Ok(yasna::construct_der(|writer| {
        writer.write_sequence(|seq| {
            seq.next().write_u8(0);
            seq.next().write_sequence(|alg| {
                alg.next().write_oid(&oid);
                match &curve {
                    Some(curve) => alg.next().write_oid(curve),
                    None => alg.next().write_null(),
                }
            });
            seq.next().write_bytes(private_key);
        })
    }))
}

/// x509-parser's OID as yasna's; `None` if an arc does not fit in 64 bits.
fn yasna_oid(oid: &Oid<'_>) -> Option<ObjectIdentifier> {
    let arcs: Vec<u64> = oid.iter()?.collect();
    Some(ObjectIdentifier::from_slice(&arcs))
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

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    // Never through a symlink planted at the path, and an existing key file does not keep
    // a looser mode: the file is replaced, not rewritten.
    nodetunnel_base::files::replace(path, contents.as_bytes(), mode).map_err(|source| {
        CaError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}
