//! Generating, writing and loading CAs (plug-in files, EC and RSA keys); what leaves carry.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;
use crate::identity::Identity;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// A CSR for a fresh key that asks for `sans` (and a subject) the CA must ignore.
fn csr(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

/// Verifies `chain` (leaf first) against `roots` exactly as a TLS peer would.
fn verify(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &store,
        &chain[1..],
        UnixTime::now(),
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
    )
}

fn load_err(dir: &Path) -> CaError {
    LocalCa::load(dir).expect_err("load should fail")
}

#[test]
fn generate_write_load_round_trip() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for file in [CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert_eq!(
            fs::read_to_string(dir.path().join(file)).unwrap(),
            ca.root_pem(),
            "{file}"
        );
    }

    let loaded = LocalCa::load(dir.path()).unwrap();
    assert_eq!(loaded.root_certs(), ca.root_certs());
    let chain = loaded
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca.root_certs()[0]);
    verify(&chain, &ca.root_certs()).unwrap();

    // Writing the loaded CA again reproduces files it loads from.
    let again = tempfile::tempdir().unwrap();
    loaded.write(again.path()).unwrap();
    assert_eq!(
        LocalCa::load(again.path()).unwrap().root_certs(),
        ca.root_certs()
    );
}

#[test]
fn leaf_carries_only_the_given_identity() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let asked = csr(vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
    ]);
    let ttl = Duration::from_secs(3600);
    let chain = ca.sign_csr(&asked, &id("a"), ttl).unwrap();
    assert_eq!(uri_sans(&chain[0]), vec![id("a").to_string()]);

    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert!(!leaf.is_ca());
    assert!(
        leaf.subject().as_raw().len() <= 2,
        "subject should be empty: {}",
        leaf.subject()
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert!(
        (now - 62..=now - 58).contains(&not_before),
        "not_before {not_before} now {now}"
    );
    assert!(
        (now + 3598..=now + 3601).contains(&not_after),
        "not_after {not_after} now {now}"
    );
    verify(&chain, &ca.root_certs()).unwrap();
}

#[test]
fn rejects_bad_csr_and_zero_ttl() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let mut tampered = csr(vec![]);
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff; // breaks the CSR's self-signature
    assert!(matches!(
        ca.sign_csr(&tampered, &id("a"), Duration::from_secs(60)),
        Err(CaError::BadCsr(_))
    ));
    assert!(matches!(
        ca.sign_csr(b"junk", &id("a"), Duration::from_secs(60)),
        Err(CaError::BadCsr(_))
    ));
    assert!(matches!(
        ca.sign_csr(&csr(vec![]), &id("a"), Duration::ZERO),
        Err(CaError::BadTtl(_))
    ));
    // Lifetimes ending past 9999 are refused, not a panic in the time arithmetic.
    for ttl in [Duration::MAX, Duration::from_secs(20_000 * 365 * 24 * 3600)] {
        assert!(matches!(
            ca.sign_csr(&csr(vec![]), &id("a"), ttl),
            Err(CaError::BadTtl(_))
        ));
    }
}

/// Writes plug-in files for a CA whose signing cert is an intermediate under a separate root;
/// returns the intermediate and the root.
fn write_intermediate_ca(dir: &Path) -> (rcgen::Certificate, CertifiedIssuer<'static, KeyPair>) {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "test root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = CertifiedIssuer::self_signed(root_params, root_key).unwrap();

    let int_key = KeyPair::generate().unwrap();
    let int_key_pem = int_key.serialize_pem();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "test intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = int_params.signed_by(&int_key, &root).unwrap();

    let put = |name: &str, pem: &str| fs::write(dir.join(name), pem).unwrap();
    put(CA_CERT_FILE, &int.pem());
    put(CA_KEY_FILE, &int_key_pem);
    put(ROOT_CERT_FILE, &root.pem());
    put(CERT_CHAIN_FILE, &format!("{}{}", int.pem(), root.pem()));
    (int, root)
}

/// Root → intermediate plug-in layout: ca-cert is the intermediate, cert-chain holds
/// intermediate + root.
#[test]
fn chain_order_with_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, pem: &str| fs::write(dir.path().join(name), pem).unwrap();
    let (int, root) = write_intermediate_ca(dir.path());

    let ca = LocalCa::load(dir.path()).unwrap();
    let chain = ca
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(&chain[1], int.der());
    assert_eq!(&chain[2], root.der());
    verify(&chain, &ca.root_certs()).unwrap();
    // Without the intermediate, the leaf does not verify: the chain really needs it.
    assert!(verify(&[chain[0].clone()], &ca.root_certs()).is_err());

    // cert-chain.pem is optional: the intermediate comes from ca-cert.pem.
    fs::remove_file(dir.path().join(CERT_CHAIN_FILE)).unwrap();
    let chain = LocalCa::load(dir.path())
        .unwrap()
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 3);
    verify(&chain, &ca.root_certs()).unwrap();

    // A root that did not sign the intermediate is refused at load time.
    let other = LocalCa::generate("cluster.local").unwrap();
    put(ROOT_CERT_FILE, &other.root_pem());
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::Untrusted { ref root, .. } if root.ends_with(ROOT_CERT_FILE)),
        "{err}"
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::Missing { ref path } if path.ends_with(CA_CERT_FILE)),
        "{err}"
    );
    assert!(err.to_string().contains(CA_CERT_FILE));

    let ca = LocalCa::generate("cluster.local").unwrap();
    ca.write(dir.path()).unwrap();
    fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::Missing { ref path } if path.ends_with(ROOT_CERT_FILE)),
        "{err}"
    );

    ca.write(dir.path()).unwrap();
    fs::write(dir.path().join(CA_CERT_FILE), "not a certificate").unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::NotPem { ref path, .. } if path.ends_with(CA_CERT_FILE)),
        "{err}"
    );
    assert!(err.to_string().contains(CA_CERT_FILE), "{err}");

    ca.write(dir.path()).unwrap();
    fs::write(dir.path().join(CA_KEY_FILE), "garbage").unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::NotPem { ref path, .. } if path.ends_with(CA_KEY_FILE)),
        "{err}"
    );

    let other = LocalCa::generate("cluster.local").unwrap();
    fs::write(dir.path().join(CA_KEY_FILE), &other.key_pem).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::KeyMismatch { ref key, .. } if key.ends_with(CA_KEY_FILE)),
        "{err}"
    );
    assert!(err.to_string().contains(CA_KEY_FILE) && err.to_string().contains(CA_CERT_FILE));

    // A leaf certificate is no CA.
    ca.write(dir.path()).unwrap();
    let leaf = ca
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(60))
        .unwrap();
    fs::write(dir.path().join(CA_CERT_FILE), certs_pem(&leaf[..1])).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, CaError::NotCa { ref path } if path.ends_with(CA_CERT_FILE)),
        "{err}"
    );
}

/// `openssl ecparam -genkey` style SEC1 keys load too.
#[test]
fn loads_sec1_ec_key() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    // PKCS#8 is SEQUENCE { version, algorithm, OCTET STRING { SEC1 ECPrivateKey } }.
    let pkcs8 = PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).unwrap();
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8.secret_der()).unwrap();
    let sec1 = info.as_sequence().unwrap()[2].as_slice().unwrap();
    fs::write(
        dir.path().join(CA_KEY_FILE),
        pem_encode("EC PRIVATE KEY", sec1),
    )
    .unwrap();
    let loaded = LocalCa::load(dir.path()).unwrap();
    let chain = loaded
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(60))
        .unwrap();
    verify(&chain, &ca.root_certs()).unwrap();
}

/// Istio's sample plug-in certs use PKCS#1 RSA keys; this fixture was made with
/// `openssl genrsa -traditional 2048` and a self-signed CA cert valid until 2126.
#[test]
fn loads_pkcs1_rsa_key() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CA_CERT_FILE), RSA_CA_CERT).unwrap();
    fs::write(dir.path().join(ROOT_CERT_FILE), RSA_CA_CERT).unwrap();
    fs::write(dir.path().join(CA_KEY_FILE), RSA_CA_KEY).unwrap();
    let ca = LocalCa::load(dir.path()).unwrap();
    let chain = ca
        .sign_csr(&csr(vec![]), &id("a"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(uri_sans(&chain[0]), vec![id("a").to_string()]);
    verify(&chain, &ca.root_certs()).unwrap();
}

#[test]
fn pem_encoding_round_trips() {
    for len in 1..70 {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let pem = pem_encode("CERTIFICATE", &data);
        assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
        let decoded = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(decoded.as_ref(), data.as_slice(), "len {len}");
    }
}

const RSA_CA_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDXTCCAkWgAwIBAgIUJN5mrVT2OG+jqaRzIlHC781AyZAwDQYJKoZIhvcNAQEL\n\
BQAwNTEgMB4GA1UECgwXbm9kZXR1bm5lbCB0ZXN0IGZpeHR1cmUxETAPBgNVBAMM\n\
CHJzYSByb290MCAXDTI2MTEyMTEwMDMxNloYDzIxMjYxMDI4MTAwMzE2WjA1MSAw\n\
HgYDVQQKDBdub2RldHVubmVsIHRlc3QgZml4dHVyZTERMA8GA1UEAwwIcnNhIHJv\n\
b3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQDUL1KKQPJXYkmuq/4I\n\
NsCnAmilMm+YzsIB5hqlFyhR0Yt86vqf8Zn7zxpVFY1UzO/ZKUPVQ09n5Yx5tGwT\n\
uJyB6Pnv8ufFKWGeU6PSVJrzij9h/IhrVuQ/MMGQJODs1dryt7zicptk0giQH7OW\n\
vJeie3/p+WKWa/lWKRSXCHcSrqRNks9hOKzmJGNsUqiUEfMRnEgoS0HjZel1f0lc\n\
owS+vtUu6nPC1SnWMjPMwq/eODY9nOzTB8SjK3e6novcX+MiSBA2y/a/eioPX+FE\n\
YJIWxrYH08hNFuhg8xVpZoX9DSm6BNT9r5W2XGSOwhrazbAFDJNLnRCZ5JAvv5nr\n\
3bl3AgMBAAGjYzBhMB0GA1UdDgQWBBTLRFCQbUvRkbtjI/qxAPySV1db3zAfBgNV\n\
HSMEGDAWgBTLRFCQbUvRkbtjI/qxAPySV1db3zAPBgNVHRMBAf8EBTADAQH/MA4G\n\
A1UdDwEB/wQEAwIBBjANBgkqhkiG9w0BAQsFAAOCAQEApEZjxSgvvZnT513YTWfx\n\
JjLwqVmGpknLj83eN2tFbVLZ2QuRgcIiKKfCCYPUQfNriOdB8mTI24tLvfTjf5LR\n\
93ZaSmIxYTjw+gyCr7kcOTnxE8Wi3Uh27ZGo9XQ9konnRp8cUPDjOPhH02zaPj07\n\
yDMyimXh7PIqk/+69K+cl9uBqUlATRFjxIon7j8wsro/J/WnYDI7IQ9JT1pT2WhZ\n\
j/eshQY4eNZPaHq7F4doOKZvvgWJRg42EJbw9Aofh2K7/3xsaydQlFEXc/m96lpX\n\
6nGTEgDPPXBaWAc5XXz4P/zKm71hkr30dFlSZ1+wLG3ROAkUtKmjDmL5eJ1usz11\n\
3A==\n\
-----END CERTIFICATE-----\n\
";

const RSA_CA_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpAIBAAKCAQEA1C9SikDyV2JJrqv+CDbApwJopTJvmM7CAeYapRcoUdGLfOr6\n\
n/GZ+88aVRWNVMzv2SlD1UNPZ+WMebRsE7icgej57/LnxSlhnlOj0lSa84o/YfyI\n\
a1bkPzDBkCTg7NXa8re84nKbZNIIkB+zlryXont/6flilmv5VikUlwh3Eq6kTZLP\n\
YTis5iRjbFKolBHzEZxIKEtB42XpdX9JXKMEvr7VLupzwtUp1jIzzMKv3jg2PZzs\n\
0wfEoyt3up6L3F/jIkgQNsv2v3oqD1/hRGCSFsa2B9PITRboYPMVaWaF/Q0pugTU\n\
/a+VtlxkjsIa2s2wBQyTS50QmeSQL7+Z6925dwIDAQABAoIBABNljA8VZtH0KzYr\n\
hNptXuklgDlxxd/bLsMLrO3gkw//rteph2WtqVzqjsauZLAW1+orKodJUu31fwT1\n\
KFgZLT129booo2VTphfaH4SvtUaEIc0sT7A4Tj80js1FgcZEunIrt7mfrnLl/GBo\n\
dXtXHCl/Tq8t3ARSNIXa1YYFARWU9MaNHrKie2iRnFEa0M/u54SaKNyS3erjmEvz\n\
B29Qr3aF8hYaq/r1LOeuoXsOpTVh/N+I9l2rmYgirtg2JdNuL7qpsEL0h53xITkC\n\
jcnlnWp1rWPliQkk+Ca6F9L8Nj/b81S2++lGT7UtDSg6BJyH5C4f28e/dD5fcPuQ\n\
sXCAMDECgYEA9aAa6NSpv7eSpIIMoDk/EwRifiwU16KGE+cztIdNi3bZvaEP7XwP\n\
+8xvJLYVu03eywavyQ68/4zQqvpQHMlxrk2otHOsVqIiCFJxYHQUDn+lDRL+M1k5\n\
YkqU/fZi2ECSiqzb4nkP6jGsLcX9CbRkECASd/12z/4MqsIK8Jqcpo8CgYEA3SWh\n\
uS3x2KtBwjeyMA/4tyL9Th7AKHVeWiBK1qqu9iGXNeQNSPk//nEwsvlxP8TQdK2u\n\
oPvNAS2XTrMwOL0Kh7EjW2SRvCA30f8Wos7fHCLQelr2yVqs4i9lt4PvKGnJUr+i\n\
BQJp32pVcItbsylh3CTmikBLbbJ2HO9+LfIF8pkCgYEA8LoXZXV3YEQj3kLu6ODy\n\
Jks31HyTeLr6OOtxS08H+tVilW0S1Sev6pHzo8EpD0dEQSqugZiGNtblc4ybk3sC\n\
hVfrLd/oWYfRXuKd53AccBE9y9B/fgfGK8T4vOYK/fJbLLo5Tn5j0J0aKEpQsoAv\n\
SXaFYz/wf+x2saw3WJPPT5UCgYBlB3AenTLDfVmJVNB+zI0ffUiji8DVuujj26TU\n\
9R0BLM9bu1emYtgtcaCB4xstushQxZfly6MYSq+5MHtzMEnDO9WfRw6dF0rpENRS\n\
hJfAztbXTv83dclNe8HIWOnFWK60sv9dsoCTpIxr4f5+lwUyAVmhB0ZuUv1Kss6+\n\
RrcY4QKBgQCXRJyiyAoocjU1vzr5ZQuJoRj9nkYezoOzoxM1P00fBioTXr+ERdDH\n\
bfJPN3yZHdwajHbOTPhniM870no6Q+uGmEclhZ4tsAxm0bpQKR2HKEJA2glEeUGe\n\
0QhW+jWeRLlEiBpZRG9/ItyzW9pheHyX8rxs3wDNuWEpzc9sJgM21w==\n\
-----END RSA PRIVATE KEY-----\n\
";

/// Verifies a serving chain (leaf first) for `name` against `roots`, as a TLS client would.
fn verify_serving(
    chain_pem: &str,
    roots: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), rustls::Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    verify(&chain, roots)?;
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    rustls::client::verify_server_name(&leaf, &name)
}

#[test]
fn serving_cert_names_hosts_and_addresses() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let sans = ["nodetunnel-control.istio-system.svc", "10.0.0.7", "::1"].map(String::from);
    let serving = ca
        .issue_serving_cert(&sans, Duration::from_secs(3600))
        .unwrap();
    for name in &sans {
        verify_serving(&serving.cert_chain_pem, &ca.root_certs(), name).unwrap();
    }
    let wrong = verify_serving(&serving.cert_chain_pem, &ca.root_certs(), "other.svc");
    assert!(wrong.is_err(), "a name not asked for is not covered");
    assert!(verify_serving(&serving.cert_chain_pem, &ca.root_certs(), "10.0.0.8").is_err());

    // The key is the leaf's, and the root is not in the chain.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 1);
    let key = KeyPair::from_pem(&serving.key_pem).unwrap();
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // A server certificate only: workload (client) use is not granted.
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!leaf.is_ca());
}

#[test]
fn serving_cert_carries_intermediates_not_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (int, root) = write_intermediate_ca(dir.path());
    let ca = LocalCa::load(dir.path()).unwrap();
    let serving = ca
        .issue_serving_cert(&["127.0.0.1".to_string()], Duration::from_secs(60))
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(serving.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(&chain[1], int.der());
    assert!(!chain.contains(root.der()));
    verify_serving(&serving.cert_chain_pem, &ca.root_certs(), "127.0.0.1").unwrap();
}

#[test]
fn serving_cert_rejects_unusable_names() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        ca.issue_serving_cert(&[], ttl),
        Err(CaError::BadSan { .. })
    ));
    for bad in ["", "has space.example", "caf\u{e9}.example"] {
        let err = ca
            .issue_serving_cert(&["ok.example".into(), bad.into()], ttl)
            .expect_err(bad);
        assert!(
            matches!(&err, CaError::BadSan { san, .. } if san == bad),
            "{bad}: {err}"
        );
    }
    assert!(matches!(
        ca.issue_serving_cert(&["ok.example".into()], Duration::ZERO),
        Err(CaError::BadTtl(_))
    ));
}

#[test]
fn trust_domain_is_known_for_generated_cas_and_settable_for_loaded_ones() {
    let ca = LocalCa::generate("example.org").unwrap();
    assert_eq!(ca.trust_domain(), Some("example.org"));
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path()).unwrap();
    let loaded = LocalCa::load(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain(), None);
    assert_eq!(
        loaded.with_trust_domain("example.org").trust_domain(),
        Some("example.org")
    );
}

/// FAKE_CA: two independently built test-root CAs (as in two tunnel processes) are the same
/// root, so a leaf one issues verifies against the other's trust anchors; a generated root does
/// not trust it.
#[test]
fn the_test_root_is_the_same_in_every_instance_and_its_leaves_cross_verify() {
    let a = LocalCa::test_root("cluster.local").unwrap();
    let b = LocalCa::test_root("cluster.local").unwrap();
    assert_eq!(a.root_certs(), b.root_certs());
    assert_eq!(a.trust_domain(), Some("cluster.local"));
    let chain = a
        .sign_csr(&csr(vec![]), &id("client"), Duration::from_secs(60))
        .unwrap();
    verify(&chain, &b.root_certs()).expect("a leaf of one test root verifies with the other");
    let other = LocalCa::generate("cluster.local").unwrap();
    assert!(verify(&chain, &other.root_certs()).is_err());

    // The root says what it is, and is a CA valid for a long time from its first day.
    let root = a.root_certs().remove(0);
    let (_, cert) = X509Certificate::from_der(&root).unwrap();
    assert!(cert.is_ca());
    assert!(cert.subject().to_string().contains("NOT FOR PRODUCTION"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(cert.validity().not_after.timestamp() > now + 50 * 365 * 24 * 3600);
}
