use super::*;
use crate::identity::ca::certs_pem;
use crate::identity::LocalCa;

#[test]
fn metadata_names_the_workload_as_istio_expects() {
    let id = Identity::new("cluster.local", "ns1", "sa1");
    let md = impersonation_metadata(&id);
    assert_eq!(md.fields.len(), 1);
    assert_eq!(
        md.fields["ImpersonatedIdentity"].kind,
        Some(Kind::StringValue(
            "spiffe://cluster.local/ns/ns1/sa/sa1".into()
        ))
    );
}

#[test]
fn validity_is_whole_seconds_never_zero() {
    assert_eq!(validity_seconds(Duration::from_secs(86400)), 86400);
    assert_eq!(validity_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(validity_seconds(Duration::from_millis(1)), 1);
    assert_eq!(validity_seconds(Duration::ZERO), 1);
    assert_eq!(validity_seconds(Duration::MAX), i64::MAX);
}

#[test]
fn chain_entries_may_hold_one_or_several_certificates() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let chain = ca
        .sign_csr(
            csr.der(),
            &Identity::new("cluster.local", "a", "b"),
            Duration::from_secs(60),
        )
        .unwrap();
    // One per entry, as istiod sends it (with its trailing newline).
    let split: Vec<String> = chain
        .iter()
        .map(|c| certs_pem(std::slice::from_ref(c)) + "\n")
        .collect();
    assert_eq!(parse_chain(&split).unwrap(), chain);
    // All in one entry, as older CAs did.
    assert_eq!(parse_chain(&[certs_pem(&chain)]).unwrap(), chain);
}

#[test]
fn unusable_chains_are_refused_with_the_reason() {
    assert_eq!(parse_chain(&[]).unwrap_err(), "cert_chain is empty");
    let err = parse_chain(&["not a certificate".into()]).unwrap_err();
    assert!(err.contains("cert_chain[0]"), "{err}");
    let err =
        parse_chain(&["-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into()])
            .unwrap_err();
    assert!(err.contains("cert_chain[0]"), "{err}");
}

#[tokio::test]
async fn bad_configuration_fails_at_construction() {
    let target = GrpcTarget {
        address: "https://127.0.0.1:15012".into(),
        root_cert: Some("/nonexistent/ca-root.pem".into()),
        token: None,
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    };
    let err = CaClient::new(target).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca-root.pem"), "{err}");
}
