//! The `Node` we present on the first request of each type. istiod keys its per-proxy state
//! on the id and reads the metadata to find which node and cluster we serve, so both follow
//! ztunnel's form exactly.

use std::collections::BTreeMap;

use nodetunnel_proto::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use super::NodeInfo;

/// Metadata keys ztunnel sends (istio/ztunnel `src/xds/client.rs`), plus `CLUSTER_ID`, which
/// ztunnel sends through its `ISTIO_META_CLUSTER_ID` variable.
pub(super) const NAME: &str = "NAME";
pub(super) const NAMESPACE: &str = "NAMESPACE";
pub(super) const INSTANCE_IPS: &str = "INSTANCE_IPS";
pub(super) const NODE_NAME: &str = "NODE_NAME";
pub(super) const CLUSTER_ID: &str = "CLUSTER_ID";

pub(super) fn node(info: &NodeInfo) -> Node {
    let mut fields: BTreeMap<String, Value> = info
        .extra_metadata
        .iter()
        .map(|(k, v)| (k.clone(), string(v)))
        .collect();
    for (key, value) in [
        (NAME, &info.pod_name),
        (NAMESPACE, &info.pod_namespace),
        (INSTANCE_IPS, &info.instance_ip),
        (NODE_NAME, &info.node_name),
        (CLUSTER_ID, &info.cluster_id),
    ] {
        fields.insert(key.to_string(), string(value));
    }
    Node {
        id: info.node_id(),
        metadata: Some(Struct { fields }),
        user_agent_name: "nodetunnel".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
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
}
