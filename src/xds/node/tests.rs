use super::*;

fn info() -> NodeInfo {
    NodeInfo {
        pod_name: "ztunnel-abcde".into(),
        pod_namespace: "istio-system".into(),
        instance_ip: "10.0.0.5".into(),
        node_name: "worker-1".into(),
        cluster_id: "Kubernetes".into(),
        cluster_domain: "cluster.local".into(),
        extra_metadata: BTreeMap::new(),
    }
}

fn meta(node: &Node, key: &str) -> Option<String> {
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

#[test]
fn id_and_metadata_in_ztunnel_form() {
    let n = node(&info());
    assert_eq!(
        n.id,
        "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
    );
    assert_eq!(meta(&n, "NAME").as_deref(), Some("ztunnel-abcde"));
    assert_eq!(meta(&n, "NAMESPACE").as_deref(), Some("istio-system"));
    assert_eq!(meta(&n, "INSTANCE_IPS").as_deref(), Some("10.0.0.5"));
    assert_eq!(meta(&n, "NODE_NAME").as_deref(), Some("worker-1"));
    assert_eq!(meta(&n, "CLUSTER_ID").as_deref(), Some("Kubernetes"));
    assert_eq!(n.metadata.unwrap().fields.len(), 5);
}

#[test]
fn cluster_domain_ends_the_id() {
    let mut i = info();
    i.cluster_domain = "corp.example".into();
    assert!(node(&i).id.ends_with("~istio-system.svc.corp.example"));
}

#[test]
fn extra_metadata_is_sent_but_cannot_override_identity_keys() {
    let mut i = info();
    i.extra_metadata.insert("DNS_CAPTURE".into(), "true".into());
    i.extra_metadata.insert("NAME".into(), "impostor".into());
    let n = node(&i);
    assert_eq!(meta(&n, "DNS_CAPTURE").as_deref(), Some("true"));
    assert_eq!(meta(&n, "NAME").as_deref(), Some("ztunnel-abcde"));
}
