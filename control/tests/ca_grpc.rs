//! The CA over real gRPC: `CaService` behind a tonic server on loopback TCP with real TLS (a
//! serving certificate from `LocalCa::issue_serving_cert`, client certificates optional and
//! verified against the mesh root), and the tunnel's `CaClient` / `SecretManager` talking to it.
//!
//! Nothing is mocked: failures are real refused connections, real TLS and real status codes.
//! Waits poll with a deadline; no assertion depends on timing.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel::grpc::GrpcTarget;
use nodetunnel::identity::certs_pem;
use nodetunnel::identity::CertificateSource;
use nodetunnel::identity::{CaClient, Identity, LocalCa, SecretManager, WorkloadCert};
use nodetunnel_control::auth::Authenticator;
use nodetunnel_control::ca_service::{CaService, Placement};
use nodetunnel_proto::istio::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use nodetunnel_proto::istio::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use nodetunnel_proto::istio::auth::IstioCertificateRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TOKEN: &str = "node-token-1";
const TTL: Duration = Duration::from_secs(3600);
/// Generous: the machine is shared; the manager's backoff starts at 200 ms.
const DEADLINE: Duration = Duration::from_secs(30);

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// The node [`TOKEN`] is bound to.
const NODE: &str = "node-1";

/// The mesh of these tests runs `client` and `server` on [`NODE`], and `elsewhere` on node-2.
fn placement() -> Placement {
    Arc::new(|i: &Identity| {
        let node = match (i.namespace.as_str(), i.service_account.as_str()) {
            ("default", "client" | "server") => NODE,
            ("default", "elsewhere") => "node-2",
            _ => return None,
        };
        Some([node.to_string()].into())
    })
}

/// Files the tunnel side reads: the roots it trusts for the CA's serving certificate and its
/// bearer token; and the control plane's token file.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(roots: &[&LocalCa]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let pem: String = roots.iter().map(|ca| ca.root_pem()).collect();
        std::fs::write(dir.path().join("ca-root.pem"), pem).unwrap();
        std::fs::write(dir.path().join("istio-token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(
            dir.path().join("accepted-tokens"),
            format!("# node tunnels\n{TOKEN} node={NODE} tunnel on {NODE}\n"),
        )
        .unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self, addr: SocketAddr) -> GrpcTarget {
        GrpcTarget {
            address: format!("https://{addr}"),
            root_cert: Some(self.path("ca-root.pem")),
            token: Some(self.path("istio-token")),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    }
}

/// A running control-plane CA; stops (gracefully) on [`CaServer::stop`].
struct CaServer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaServer {
    /// Serves `ca` on `addr` (port 0 for any); returns the server and the bound address.
    async fn start(ca: Arc<LocalCa>, files: &Files, addr: SocketAddr) -> (CaServer, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let serving = ca
            .issue_serving_cert(&[addr.ip().to_string()], TTL)
            .unwrap();
        let tls = ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &serving.cert_chain_pem,
                &serving.key_pem,
            ))
            .client_ca_root(Certificate::from_pem(ca.root_pem()))
            .client_auth_optional(true);
        let auth = Arc::new(Authenticator::new(
            Some(files.path("accepted-tokens")),
            true,
        ));
        let service = CaService::new(ca, auth, placement(), Duration::from_secs(24 * 3600));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move { server.await.expect("CA server failed") });
        (
            CaServer {
                stop: Some(stop),
                task,
            },
            addr,
        )
    }

    /// Stops accepting, closes connections and waits until the server is gone.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("CA server did not stop")
            .unwrap();
    }
}

/// Runs `attempt` until it succeeds or [`DEADLINE`] passes (then panics with the last error).
async fn eventually<T, E: std::fmt::Display, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() < end => {
                tracing::debug!("{what}: not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: still failing after {DEADLINE:?}: {e}"),
        }
    }
}

fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(cert).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Verifies `cert` as a peer would, against the roots `trust` holds.
fn verifies(cert: &WorkloadCert, trust: &WorkloadCert) -> bool {
    verifies_against(cert, &trust.roots)
}

fn verifies_against(cert: &WorkloadCert, roots: &rustls::RootCertStore) -> bool {
    let leaf = rustls::server::ParsedCertificate::try_from(cert.leaf()).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        roots,
        &cert.chain[1..],
        UnixTime::now(),
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
    )
    .is_ok()
}

fn roots_of(ca: &LocalCa) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for root in ca.root_certs() {
        store.add(root).unwrap();
    }
    store
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn remote_manager_issues_certificates_that_validate() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;
    let client = Arc::new(CaClient::new(files.target(addr)).unwrap());

    // The client alone: the chain comes back leaf first, root last, for the named workload.
    let chain = client.sign(&csr_pem(), &id("client"), TTL).await.unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(uri_sans(&chain[0]), vec![id("client").to_string()]);
    assert_eq!(chain.last(), ca.root_certs().first());

    // Through the manager: a validated certificate with our key, trusting the CA's root.
    let manager = SecretManager::new(CertificateSource::Remote(client), TTL);
    let cert = manager.fetch(&id("server")).await.unwrap();
    assert_eq!(cert.identity, id("server"));
    assert_eq!(uri_sans(cert.leaf()), vec![id("server").to_string()]);
    assert_eq!(cert.chain.len(), 1, "the root is not presented");
    assert_eq!(cert.roots.len(), 1);
    assert!(verifies_against(&cert, &roots_of(&ca)));
    assert!(Arc::ptr_eq(
        &cert,
        &manager.fetch(&id("server")).await.unwrap()
    ));
    assert_eq!(manager.issuance_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn rejected_token_names_the_ca_and_the_servers_reason() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;
    std::fs::write(files.path("istio-token"), "stolen-or-stale\n").unwrap();
    let client = CaClient::new(files.target(addr)).unwrap();

    let err = client
        .sign(&csr_pem(), &id("client"), TTL)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("rejected our credentials"), "{err}");
    assert!(err.contains("bearer token not accepted"), "{err}");
    assert!(err.contains(&format!("https://{addr}")), "{err}");
    assert!(!err.contains("stolen-or-stale"), "token echoed: {err}");

    // The token file is read per call: fixing it fixes the next request, no restart.
    std::fs::write(files.path("istio-token"), TOKEN).unwrap();
    client.sign(&csr_pem(), &id("client"), TTL).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unknown_identity_is_permission_denied() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;
    let manager = SecretManager::new(
        CertificateSource::Remote(Arc::new(CaClient::new(files.target(addr)).unwrap())),
        TTL,
    );
    let err = manager
        .fetch(&id("intruder"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(
        err.contains(
            "no workload in the mesh runs as spiffe://cluster.local/ns/default/sa/intruder"
        ),
        "{err}"
    );
    server.stop().await;
}

/// The tunnel asks for a workload on another node than its token's: the refusal reaches it
/// with the identity and both nodes named, and the token unsaid.
#[tokio::test]
async fn another_nodes_identity_is_permission_denied_naming_identity_and_node() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;
    let manager = SecretManager::new(
        CertificateSource::Remote(Arc::new(CaClient::new(files.target(addr)).unwrap())),
        TTL,
    );
    let err = manager
        .fetch(&id("elsewhere"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(
        err.contains(
            "token \"tunnel on node-1\" is bound to node \"node-1\", and no workload on \"node-1\" \
             runs as spiffe://cluster.local/ns/default/sa/elsewhere (its workloads are on \"node-2\")"
        ),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "token echoed: {err}");
    // Its own node's workload, same token, same client: issued.
    assert_eq!(
        manager.fetch(&id("client")).await.unwrap().identity,
        id("client")
    );
    server.stop().await;
}

/// A client without a token: authenticated by its mesh certificate, for its own identity only.
#[tokio::test]
async fn client_certificate_authenticates_its_own_identity() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;

    // A workload certificate for `server`, as a pod would hold it.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let chain = ca.sign_csr(csr.der(), &id("server"), TTL).unwrap();
    let chain_pem = certs_pem(&chain[..chain.len() - 1]);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_pem()))
        .identity(tonic::transport::Identity::from_pem(
            chain_pem,
            key.serialize_pem(),
        ));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut with_cert = IstioCertificateServiceClient::new(channel);

    let request = |metadata: Option<&Identity>| IstioCertificateRequest {
        csr: csr_pem(),
        validity_duration: 600,
        metadata: metadata.map(|i| prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(i.to_string())),
                },
            )]
            .into(),
        }),
    };
    let response = with_cert
        .create_certificate(request(None))
        .await
        .unwrap()
        .into_inner();
    let issued: Vec<CertificateDer<'static>> = response
        .cert_chain
        .iter()
        .map(|entry| CertificateDer::from_pem_slice(entry.as_bytes()).unwrap())
        .collect();
    assert_eq!(uri_sans(&issued[0]), vec![id("server").to_string()]);

    let denied = with_cert
        .create_certificate(request(Some(&id("client"))))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Neither a token nor a certificate: refused, saying so.
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.root_pem())))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = IstioCertificateServiceClient::new(channel)
        .create_certificate(request(Some(&id("client"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "no bearer token and no client certificate presented"
    );
    server.stop().await;
}

/// The CA is down when the tunnel starts: the first fetch says why, and once the CA comes up on
/// that address a later fetch succeeds through the manager's backoff, without a new client.
#[tokio::test]
async fn unreachable_ca_at_start_recovers_without_restart() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let files = Files::new(&[&ca]);
    // A port nothing listens on (yet).
    let addr = {
        let probe = std::net::TcpListener::bind(any_port()).unwrap();
        probe.local_addr().unwrap()
    };
    let manager = SecretManager::new(
        CertificateSource::Remote(Arc::new(CaClient::new(files.target(addr)).unwrap())),
        TTL,
    );
    let err = manager.fetch(&id("client")).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("cannot reach the CA at https://{addr}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");

    let (server, _) = CaServer::start(ca.clone(), &files, addr).await;
    let client_id = id("client");
    let cert = eventually("fetch once the CA is up", || manager.fetch(&client_id)).await;
    assert_eq!(cert.identity, id("client"));
    assert!(verifies_against(&cert, &roots_of(&ca)));
    server.stop().await;
}

/// The CA's root changes (a new CA takes over the address): new certificates chain to the new
/// root, and the bundle in them still trusts the old root, so peers holding certificates
/// issued before the rotation keep verifying.
#[tokio::test]
async fn root_rotation_keeps_the_previous_root_trusted() {
    let old_ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let new_ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    // The tunnel trusts both roots for the CA's serving certificate, as an operator rotating
    // roots distributes the new one first.
    let files = Files::new(&[&old_ca, &new_ca]);
    let (old_server, addr) = CaServer::start(old_ca.clone(), &files, any_port()).await;
    let manager = SecretManager::new(
        CertificateSource::Remote(Arc::new(CaClient::new(files.target(addr)).unwrap())),
        TTL,
    );
    let before = manager.fetch(&id("client")).await.unwrap();
    assert!(verifies_against(&before, &roots_of(&old_ca)));
    assert_eq!(before.roots.len(), 1);

    old_server.stop().await;
    let (new_server, _) = CaServer::start(new_ca.clone(), &files, addr).await;
    let server_id = id("server");
    let after = eventually("a certificate from the new CA", || {
        manager.fetch(&server_id)
    })
    .await;

    assert!(verifies_against(&after, &roots_of(&new_ca)));
    assert!(
        !verifies_against(&after, &roots_of(&old_ca)),
        "chains to the new root"
    );
    assert_eq!(after.roots.len(), 2, "bundle holds both roots");
    assert!(verifies(&before, &after), "pre-rotation peers still verify");
    assert!(verifies(&after, &after));

    // Renewing the pre-rotation identity moves it to the new root too.
    manager.forget(&id("client"));
    let renewed = manager.fetch(&id("client")).await.unwrap();
    assert!(verifies_against(&renewed, &roots_of(&new_ca)));
    assert_eq!(renewed.roots.len(), 2);
    new_server.stop().await;
}

/// A CA that accepts the connection but never answers (not even the TLS handshake) turns into a
/// timely error naming it, not a fetch that hangs.
#[tokio::test]
async fn silent_ca_times_out_with_a_clear_error() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let files = Files::new(&[&ca]);
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let client = CaClient::new(files.target(addr))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let err = client
        .sign(&csr_pem(), &id("client"), TTL)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("the CA at https://{addr} did not answer in time")),
        "{err}"
    );
    held.abort();
}

/// A client certificate the server trusts but that names no workload (a DNS SAN only) does not
/// authenticate anyone.
#[tokio::test]
async fn client_certificate_without_spiffe_identity_is_refused() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose};
    use rcgen::{IsCa, KeyPair, KeyUsagePurpose};

    // A CA whose key the test holds, loaded as plug-in files so the server uses the same root.
    let root_key = KeyPair::generate().unwrap();
    let root_key_pem = root_key.serialize_pem();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root = CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    for (file, pem) in [
        ("ca-cert.pem", root.pem()),
        ("root-cert.pem", root.pem()),
        ("ca-key.pem", root_key_pem),
    ] {
        std::fs::write(ca_dir.path().join(file), pem).unwrap();
    }
    let ca = Arc::new(
        LocalCa::load(ca_dir.path())
            .unwrap()
            .with_trust_domain("cluster.local"),
    );
    let files = Files::new(&[&ca]);
    let (server, addr) = CaServer::start(ca.clone(), &files, any_port()).await;

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["tool.example".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &root).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_pem()))
        .identity(tonic::transport::Identity::from_pem(
            cert.pem(),
            key.serialize_pem(),
        ));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = IstioCertificateServiceClient::new(channel)
        .create_certificate(IstioCertificateRequest {
            csr: csr_pem(),
            validity_duration: 600,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "client certificate has no SPIFFE identity"
    );
    server.stop().await;
}
