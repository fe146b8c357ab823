use super::*;

fn target(address: &str) -> GrpcTarget {
    GrpcTarget {
        address: address.into(),
        root_cert: None,
        token: None,
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn addresses_are_checked_up_front() {
    assert!(target("https://istiod.istio-system.svc:15012")
        .channel()
        .is_ok());
    let err = target("istiod:15012").channel().unwrap_err().to_string();
    assert!(err.contains("istiod:15012"), "{err}");
    let mut t = target("https://127.0.0.1:15012");
    t.root_cert = Some("/nonexistent/root-cert.pem".into());
    let err = t.channel().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/root-cert.pem"), "{err}");
}

#[test]
fn token_is_read_per_call_and_must_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("istio-token");
    let mut t = target("https://127.0.0.1:1");
    t.token = Some(path.clone());
    let mut req = tonic::Request::new(());
    let err = t.authorize(&mut req).unwrap_err().to_string();
    assert!(err.contains("istio-token"), "{err}");
    std::fs::write(&path, "first\n").unwrap();
    t.authorize(&mut req).unwrap();
    assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer first");
    std::fs::write(&path, "second").unwrap();
    t.authorize(&mut req).unwrap();
    assert_eq!(
        req.metadata().get("authorization").unwrap(),
        "Bearer second"
    );
    assert_eq!(req.metadata().get("clusterid").unwrap(), "Kubernetes");
    std::fs::write(&path, "  \n").unwrap();
    assert!(matches!(
        t.authorize(&mut req),
        Err(GrpcError::BadToken { .. })
    ));
}

#[test]
fn explain_names_the_cause() {
    let s = Status::unauthenticated("token not accepted");
    let text = explain(&s, "the control plane at https://cp:15012");
    assert!(text.contains("rejected our credentials"), "{text}");
    assert!(text.contains("token not accepted"), "{text}");
}
