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
mod tests;
