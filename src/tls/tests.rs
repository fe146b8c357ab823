//! Real handshakes over loopback TCP between certificates from real (in-process) CAs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::config::ALPN_H2;
use super::verify::identity_rejection;
use super::*;
use crate::identity::CertificateSource;
use crate::identity::{LocalCa, SecretManager, TlsConfigs, WorkloadCert};

fn id(td: &str, sa: &str) -> Identity {
    Identity::new(td, "default", sa)
}

fn ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::generate("cluster.local").unwrap())
}

async fn cert(ca: &Arc<LocalCa>, id: &Identity) -> Arc<WorkloadCert> {
    SecretManager::new(
        CertificateSource::Local(ca.clone()),
        Duration::from_secs(3600),
    )
    .fetch(id)
    .await
    .unwrap()
}

struct Outcome {
    client: std::io::Result<client::TlsStream<TcpStream>>,
    server: std::io::Result<server::TlsStream<TcpStream>>,
}

/// One handshake over a real 127.0.0.1 socket; on success a ping/pong proves the channel works.
async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(tls)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    // Callers name the destination by IP; the certificates carry no IP SAN, so this also shows
    // the name is not checked.
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let client = async {
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        assert_eq!(&pong, b"pong");
        Ok(tls)
    }
    .await;
    let server = accept.await.unwrap();
    Outcome { client, server }
}

fn rustls_error(err: &std::io::Error) -> &rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

/// Our identity error carried inside a rustls `InvalidCertificate(Other(..))`.
fn identity_error(err: &std::io::Error) -> &TlsError {
    let rustls = rustls_error(err);
    identity_rejection(rustls)
        .unwrap_or_else(|| panic!("expected an identity rejection, got {rustls:?}"))
}

/// The chain did not verify against the roots. Generated roots of one trust domain share a
/// subject name, so webpki reports a bad signature rather than an unknown issuer.
fn untrusted_chain(err: &std::io::Error) -> bool {
    matches!(
        rustls_error(err),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature
        )
    )
}

/// Like [`client_config`] for `cert`, but trusting `roots` instead of `cert.roots`: lets a
/// client with a foreign certificate still accept the server, so the server's check is tested.
fn client_trusting(
    cert: &WorkloadCert,
    roots: &WorkloadCert,
    expected: Identity,
) -> Arc<ClientConfig> {
    let ours = client_config(cert, vec![]).unwrap();
    let provider = ours.crypto_provider().clone();
    let verifier = verify::ServerIdentityVerifier {
        roots: roots.roots.clone(),
        expected: vec![expected],
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    config.alpn_protocols = ours.alpn_protocols.clone();
    Arc::new(config)
}

#[tokio::test]
async fn matching_identities_connect() {
    let ca = ca();
    let (a, b) = (id("cluster.local", "a"), id("cluster.local", "b"));
    let (client_cert, server_cert) = (cert(&ca, &a).await, cert(&ca, &b).await);
    let expected = vec![id("cluster.local", "other"), b.clone()];
    let out = handshake(
        client_config(&client_cert, expected).unwrap(),
        server_config(&server_cert).unwrap(),
    )
    .await;
    let client = out.client.unwrap();
    let server = out.server.unwrap();

    let conn = client.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(peer_identity(conn.peer_certificates().unwrap()).unwrap(), b);

    let conn = server.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(peer_identity(conn.peer_certificates().unwrap()).unwrap(), a);
}

#[tokio::test]
async fn client_rejects_unexpected_server_identity() {
    let ca = ca();
    let (a, b) = (id("cluster.local", "a"), id("cluster.local", "b"));
    let out = handshake(
        client_config(&*cert(&ca, &a).await, vec![a.clone()]).unwrap(),
        server_config(&*cert(&ca, &b).await).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    match identity_error(&err) {
        TlsError::UnexpectedServer {
            expected,
            presented,
        } => {
            assert_eq!(expected, &vec![a.clone()]);
            assert_eq!(presented, &b);
        }
        other => panic!("wrong rejection: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("presented identity {b}")), "{msg}");
    assert!(msg.contains(&format!("expected {a}")), "{msg}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_rejects_client_from_other_root() {
    let (ours, theirs) = (ca(), ca());
    let b = id("cluster.local", "b");
    let server_cert = cert(&ours, &b).await;
    let client_cert = cert(&theirs, &id("cluster.local", "a")).await;
    let out = handshake(
        client_trusting(&client_cert, &server_cert, b.clone()),
        server_config(&server_cert).unwrap(),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(untrusted_chain(&err), "{err}");
    assert!(out.client.is_err(), "the client sees the server's alert");

    // Control: the same client with a certificate from our root is accepted.
    let client_cert = cert(&ours, &id("cluster.local", "a")).await;
    let out = handshake(
        client_trusting(&client_cert, &server_cert, b),
        server_config(&server_cert).unwrap(),
    )
    .await;
    out.server.unwrap();
}

#[tokio::test]
async fn client_rejects_server_from_other_root() {
    let (ours, theirs) = (ca(), ca());
    let b = id("cluster.local", "b");
    let out = handshake(
        client_config(
            &*cert(&ours, &id("cluster.local", "a")).await,
            vec![b.clone()],
        )
        .unwrap(),
        server_config(&*cert(&theirs, &b).await).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(untrusted_chain(&err), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let ca = ca();
    let b = id("cluster.local", "b");
    let server_cert = cert(&ca, &b).await;
    // Same suites, versions and server verification as ours, but no client certificate.
    let ours = client_config(&server_cert, vec![b.clone()]).unwrap();
    let mut anonymous = ClientConfig::builder_with_provider(ours.crypto_provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::ServerIdentityVerifier {
            roots: server_cert.roots.clone(),
            expected: vec![b.clone()],
            algorithms: ours.crypto_provider().signature_verification_algorithms,
        }))
        .with_no_client_auth();
    anonymous.alpn_protocols = ours.alpn_protocols.clone();
    let out = handshake(Arc::new(anonymous), server_config(&server_cert).unwrap()).await;
    let err = out.server.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::NoCertificatesPresented),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_rejects_client_of_other_trust_domain() {
    let ca = ca();
    let foreign = id("other.domain", "a");
    let b = id("cluster.local", "b");
    let out = handshake(
        client_config(&*cert(&ca, &foreign).await, vec![b.clone()]).unwrap(),
        server_config(&*cert(&ca, &b).await).unwrap(),
    )
    .await;
    let err = out.server.unwrap_err();
    match identity_error(&err) {
        TlsError::ForeignTrustDomain {
            trust_domain,
            presented,
        } => {
            assert_eq!(trust_domain, "cluster.local");
            assert_eq!(presented, &foreign);
        }
        other => panic!("wrong rejection: {other}"),
    }
    assert!(err.to_string().contains(&foreign.to_string()), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn configs_allow_only_tls13_aes_gcm_and_h2() {
    let ca = ca();
    let cert = cert(&ca, &id("cluster.local", "a")).await;
    let client = client_config(&cert, vec![]).unwrap();
    let server = server_config(&cert).unwrap();
    for provider in [client.crypto_provider(), server.crypto_provider()] {
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            vec![
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
        );
    }
    assert_eq!(client.alpn_protocols, vec![ALPN_H2.to_vec()]);
    assert_eq!(server.alpn_protocols, vec![ALPN_H2.to_vec()]);
}

/// The leaf certificate the other end presented.
fn peer_leaf<S>(conn: &rustls::ConnectionCommon<S>) -> CertificateDer<'static> {
    conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Asserts the client refused the server because it expected `expected`.
fn assert_unexpected_server(out: Outcome, expected: &Identity) {
    let err = out.client.unwrap_err();
    match identity_error(&err) {
        TlsError::UnexpectedServer { expected: e, .. } => assert_eq!(e, &vec![expected.clone()]),
        other => panic!("wrong rejection: {other}"),
    }
}

#[tokio::test]
async fn configs_are_built_once_per_certificate() {
    let ca = ca();
    let (a, b) = (id("cluster.local", "a"), id("cluster.local", "b"));
    let ours = cert(&ca, &a).await;
    let server = server_config(&ours).unwrap();
    assert!(Arc::ptr_eq(&server, &server_config(&ours).unwrap()));
    let client = client_config(&ours, vec![b.clone()]).unwrap();
    assert!(Arc::ptr_eq(
        &client,
        &client_config(&ours, vec![b.clone()]).unwrap()
    ));
    assert_eq!(ours.tls_configs().client_count(), 1);

    // Another certificate of the same identity has its own configs.
    let other = cert(&ca, &a).await;
    assert!(!Arc::ptr_eq(&server, &server_config(&other).unwrap()));
    assert!(!Arc::ptr_eq(
        &client,
        &client_config(&other, vec![b]).unwrap()
    ));
}

#[tokio::test]
async fn renewed_certificate_gets_fresh_configs() {
    let ca = ca();
    let (a, b) = (id("cluster.local", "a"), id("cluster.local", "b"));
    let peer = cert(&ca, &a).await;
    let manager = SecretManager::new(CertificateSource::Local(ca), Duration::from_secs(2));
    let first = manager.fetch(&b).await.unwrap();
    let (server, client) = (
        server_config(&first).unwrap(),
        client_config(&first, vec![a.clone()]).unwrap(),
    );
    if let Ok(wait) =
        (first.refresh_at() + Duration::from_millis(50)).duration_since(SystemTime::now())
    {
        tokio::time::sleep(wait).await;
    }
    let renewed = manager.fetch(&b).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed), "the manager renewed");
    let renewed_server = server_config(&renewed).unwrap();
    let renewed_client = client_config(&renewed, vec![a.clone()]).unwrap();
    assert!(!Arc::ptr_eq(&server, &renewed_server));
    assert!(!Arc::ptr_eq(&client, &renewed_client));

    // The new configs present the new certificate, on both sides.
    let out = handshake(client_config(&peer, vec![b]).unwrap(), renewed_server).await;
    assert_eq!(&peer_leaf(out.client.unwrap().get_ref().1), renewed.leaf());
    let out = handshake(renewed_client, server_config(&peer).unwrap()).await;
    assert_eq!(&peer_leaf(out.server.unwrap().get_ref().1), renewed.leaf());
}

#[tokio::test]
async fn client_configs_are_per_expected_set_and_verify_their_own_set() {
    let ca = ca();
    let (a, b, c) = (
        id("cluster.local", "a"),
        id("cluster.local", "b"),
        id("cluster.local", "c"),
    );
    let client = cert(&ca, &a).await;
    let (server_b, server_c) = (cert(&ca, &b).await, cert(&ca, &c).await);
    let to_b = client_config(&client, vec![b.clone()]).unwrap();
    let to_c = client_config(&client, vec![c.clone()]).unwrap();
    assert!(!Arc::ptr_eq(&to_b, &to_c));
    assert_eq!(client.tls_configs().client_count(), 2);

    // Each cached config, fetched again, accepts its own server and refuses the other.
    for _ in 0..2 {
        let to_b = client_config(&client, vec![b.clone()]).unwrap();
        let to_c = client_config(&client, vec![c.clone()]).unwrap();
        let out = handshake(to_b.clone(), server_config(&server_b).unwrap()).await;
        assert_eq!(&peer_leaf(out.client.unwrap().get_ref().1), server_b.leaf());
        let out = handshake(to_c.clone(), server_config(&server_c).unwrap()).await;
        assert_eq!(&peer_leaf(out.client.unwrap().get_ref().1), server_c.leaf());
        assert_unexpected_server(handshake(to_b, server_config(&server_c).unwrap()).await, &b);
        assert_unexpected_server(handshake(to_c, server_config(&server_b).unwrap()).await, &c);
    }
    assert_eq!(client.tls_configs().client_count(), 2);
}

#[tokio::test]
async fn client_config_cache_is_bounded() {
    let ca = ca();
    let client = cert(&ca, &id("cluster.local", "a")).await;
    let max = TlsConfigs::MAX_CLIENT_CONFIGS;
    let target = |i: usize| vec![id("cluster.local", &format!("sa{i}"))];
    let mut newest = None;
    for i in 0..2 * max {
        newest = Some(client_config(&client, target(i)).unwrap());
        assert!(client.tls_configs().client_count() <= max);
    }
    assert_eq!(client.tls_configs().client_count(), max);
    // The set just added is still cached.
    assert!(Arc::ptr_eq(
        &newest.unwrap(),
        &client_config(&client, target(2 * max - 1)).unwrap()
    ));
    // Every set, evicted or not, still yields a config that verifies its server.
    let server = cert(&ca, &target(0)[0]).await;
    for i in [0, max, 2 * max - 1] {
        let out = handshake(
            client_config(&client, target(i)).unwrap(),
            server_config(&server).unwrap(),
        )
        .await;
        if i == 0 {
            out.client.unwrap();
        } else {
            assert_unexpected_server(out, &target(i)[0]);
        }
    }
    assert_eq!(client.tls_configs().client_count(), max);
}

/// A self-signed certificate with the given SANs, to feed `peer_identity` odd shapes.
fn cert_with_sans(sans: &[&str]) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("dns:") {
            Some(dns) => rcgen::SanType::DnsName(dns.try_into().unwrap()),
            None => rcgen::SanType::URI((*s).try_into().unwrap()),
        })
        .collect();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn peer_identity_wants_exactly_one_spiffe_uri() {
    let a = "spiffe://cluster.local/ns/default/sa/a";
    let b = "spiffe://cluster.local/ns/default/sa/b";
    assert_eq!(
        peer_identity(&[cert_with_sans(&[a, "dns:a.example", "https://x.example/"])]).unwrap(),
        a.parse().unwrap()
    );
    assert!(matches!(
        peer_identity(&[]),
        Err(TlsError::NoPeerCertificate)
    ));
    assert!(matches!(
        peer_identity(&[cert_with_sans(&["dns:a.example"])]),
        Err(TlsError::NoSpiffeIdentity)
    ));
    assert!(matches!(
        peer_identity(&[cert_with_sans(&[])]),
        Err(TlsError::NoSpiffeIdentity)
    ));
    assert!(matches!(
        peer_identity(&[cert_with_sans(&[a, b])]),
        Err(TlsError::MultipleIdentities(ids)) if ids == [a, b]
    ));
    assert!(matches!(
        peer_identity(&[cert_with_sans(&["spiffe://cluster.local/oops"])]),
        Err(TlsError::BadIdentity(_))
    ));
    assert!(matches!(
        peer_identity(&[CertificateDer::from(vec![1, 2, 3])]),
        Err(TlsError::BadCertificate(_))
    ));
}
