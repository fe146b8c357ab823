//! Identity choice, TTL and response layout, driven below authentication (the gRPC and TLS
//! path is in `control/tests/ca_grpc.rs`).

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;

const MAX_TTL: Duration = Duration::from_secs(48 * 3600);

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// A service whose mesh runs `client` on node-1, `server` on node-1 and node-2, and `vm` on no
/// node, in cluster.local.
fn service() -> CaService {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let auth = Arc::new(Authenticator::new(None, true));
    let placement: Placement = Arc::new(|i: &Identity| {
        let nodes: &[&str] = match (i.namespace.as_str(), i.service_account.as_str()) {
            ("default", "client") => &["node-1"],
            ("default", "server") => &["node-1", "node-2"],
            ("default", "vm") => &[],
            _ => return None,
        };
        Some(nodes.iter().map(|n| n.to_string()).collect())
    });
    CaService::new(ca, auth, placement, MAX_TTL)
}

/// The token of node-1's tunnel.
fn token() -> Caller {
    token_of("node-1")
}

fn token_of(node: &str) -> Caller {
    Caller::Token {
        label: format!("tunnel on {node}"),
        node: node.into(),
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

fn request(impersonate: Option<&str>, validity_duration: i64) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: csr_pem(),
        validity_duration,
        metadata: impersonate.map(|s| prost_types::Struct {
            fields: BTreeMap::from([(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(s.into())),
                },
            )]),
        }),
    }
}

fn parse(response: &IstioCertificateResponse) -> Vec<CertificateDer<'static>> {
    response
        .cert_chain
        .iter()
        .map(|pem| {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(certs.len(), 1, "one certificate per entry");
            certs.into_iter().next().unwrap()
        })
        .collect()
}

fn leaf_uri(chain: &[CertificateDer<'_>]) -> String {
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [GeneralName::URI(uri)] => uri.to_string(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

fn lifetime(chain: &[CertificateDer<'_>]) -> Duration {
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let v = leaf.validity();
    Duration::from_secs((v.not_after.timestamp() - v.not_before.timestamp()) as u64)
}

#[test]
fn token_caller_gets_the_impersonated_identity_with_root_last() {
    let svc = service();
    let response = svc
        .sign(&token(), request(Some(&id("client").to_string()), 3600))
        .unwrap();
    assert!(response.cert_chain.iter().all(|pem| pem.ends_with('\n')));
    let chain = parse(&response);
    assert_eq!(leaf_uri(&chain), id("client").to_string());
    assert_eq!(chain.last(), svc.ca.root_certs().first(), "root last");
    assert_eq!(chain.len(), 2);
    // Back-dated by a minute for clock skew, otherwise exactly the requested hour.
    assert_eq!(lifetime(&chain), Duration::from_secs(3600 + 60));
}

#[test]
fn ttl_defaults_and_is_capped() {
    let svc = service();
    for (requested, expected) in [
        (0, DEFAULT_TTL),
        (-5, DEFAULT_TTL),
        (10, Duration::from_secs(10)),
        (i64::MAX, MAX_TTL),
    ] {
        assert_eq!(svc.ttl(requested), expected, "{requested}");
    }
    let short = CaService::new(
        svc.ca.clone(),
        svc.auth.clone(),
        svc.placement.clone(),
        Duration::from_secs(600),
    );
    assert_eq!(
        short.ttl(0),
        Duration::from_secs(600),
        "default is capped too"
    );
    let chain = parse(
        &short
            .sign(&token(), request(Some(&id("client").to_string()), 0))
            .unwrap(),
    );
    assert_eq!(lifetime(&chain), Duration::from_secs(600 + 60));
}

#[test]
fn unknown_or_foreign_identities_are_denied() {
    let svc = service();
    let status = svc
        .sign(&token(), request(Some(&id("nobody").to_string()), 0))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("spiffe://cluster.local/ns/default/sa/nobody"),
        "{}",
        status.message()
    );

    let foreign = Identity::new("other.domain", "default", "client");
    let status = svc
        .sign(&token(), request(Some(&foreign.to_string()), 0))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("trust domain"),
        "{}",
        status.message()
    );
}

#[test]
fn malformed_requests_are_invalid_arguments() {
    let svc = service();
    let cases = [
        ("no identity from a token caller", request(None, 0)),
        ("not SPIFFE", request(Some("https://example.com/x"), 0)),
        (
            "garbage CSR",
            IstioCertificateRequest {
                csr: "not a csr".into(),
                ..request(Some(&id("client").to_string()), 0)
            },
        ),
    ];
    for (what, req) in cases {
        let status = svc.sign(&token(), req).unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }

    // A CSR whose signature doesn't match its key (one byte of the signature flipped).
    let mut req = request(Some(&id("client").to_string()), 0);
    let der = CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes()).unwrap();
    let mut der = der.as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    req.csr = pem_csr(&der);
    let status = svc.sign(&token(), req).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Metadata of the wrong type.
    let mut req = request(None, 0);
    req.metadata = Some(prost_types::Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        )]),
    });
    let status = svc.sign(&token(), req).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

fn pem_csr(der: &[u8]) -> String {
    // The crate writes PEM for certificates only; the label is all that differs.
    certs_pem(&[CertificateDer::from(der.to_vec())]).replace("CERTIFICATE", "CERTIFICATE REQUEST")
}

#[test]
fn certificate_callers_get_their_own_identity_only() {
    let svc = service();
    let caller = Caller::Certificate {
        identity: id("server"),
    };
    let chain = parse(&svc.sign(&caller, request(None, 0)).unwrap());
    assert_eq!(leaf_uri(&chain), id("server").to_string());
    // Naming itself explicitly is fine too.
    let chain = parse(
        &svc.sign(&caller, request(Some(&id("server").to_string()), 0))
            .unwrap(),
    );
    assert_eq!(leaf_uri(&chain), id("server").to_string());

    let status = svc
        .sign(&caller, request(Some(&id("client").to_string()), 0))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // A certificate whose identity left the mesh renews nothing.
    let gone = Caller::Certificate {
        identity: id("gone"),
    };
    let status = svc.sign(&gone, request(None, 0)).unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[test]
fn a_token_gets_only_identities_of_workloads_on_its_node() {
    let svc = service();
    // Own node: issued. An identity running on several nodes is issued to each of them.
    for (node, sa) in [
        ("node-1", "client"),
        ("node-1", "server"),
        ("node-2", "server"),
    ] {
        let chain = parse(
            &svc.sign(&token_of(node), request(Some(&id(sa).to_string()), 0))
                .unwrap_or_else(|e| panic!("{node} asking for {sa}: {e:?}")),
        );
        assert_eq!(leaf_uri(&chain), id(sa).to_string());
    }

    // Another node's workload: denied, naming the identity, the token's node and label, and
    // where the identity does run.
    let status = svc
        .sign(
            &token_of("node-2"),
            request(Some(&id("client").to_string()), 0),
        )
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "token \"tunnel on node-2\" is bound to node \"node-2\", and no workload on \"node-2\" \
         runs as spiffe://cluster.local/ns/default/sa/client (its workloads are on \"node-1\")"
    );

    // A node with no workloads at all gets nothing.
    let status = svc
        .sign(
            &token_of("node-9"),
            request(Some(&id("server").to_string()), 0),
        )
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("\"node-9\""),
        "{}",
        status.message()
    );

    // A workload that names no node is no token's to ask for.
    let status = svc
        .sign(&token(), request(Some(&id("vm").to_string()), 0))
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().ends_with("(its workloads name no node)"),
        "{}",
        status.message()
    );
}

#[test]
fn a_certificate_caller_is_not_limited_by_node() {
    // `vm` runs on no node; its own certificate renews it.
    let svc = service();
    let caller = Caller::Certificate { identity: id("vm") };
    let chain = parse(&svc.sign(&caller, request(None, 0)).unwrap());
    assert_eq!(leaf_uri(&chain), id("vm").to_string());
}
