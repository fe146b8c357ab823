//! `XDS_ADDRESS` or `LOCAL_XDS_PATH`: where workloads, services and policies come from.

use std::path::PathBuf;

use super::env::Env;
use super::grpc::{default_istiod_address, grpc_target, GrpcVars};
use super::ConfigError;
use crate::xds::{NodeInfo, XdsConfig};

/// Where workloads, services and policies come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// `LOCAL_XDS_PATH`: a YAML file read once at start.
    File(PathBuf),
    /// `XDS_ADDRESS`: a control plane over delta xDS.
    Xds(Box<XdsConfig>),
}

const XDS_VARS: GrpcVars = GrpcVars {
    address: "XDS_ADDRESS",
    root_ca: "XDS_ROOT_CA",
    auth_token: "XDS_AUTH_TOKEN",
    header_prefix: "XDS_HEADER_",
    alt_hostname: "ALT_XDS_HOSTNAME",
};

impl ConfigSource {
    /// Exactly one of the two sources. The node the control plane sees is this tunnel's pod
    /// (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`) in the cluster the other arguments name.
    pub(super) fn from_env(
        env: &Env<'_>,
        cluster_id: &str,
        cluster_domain: &str,
        node_name: Option<&str>,
    ) -> Result<ConfigSource, ConfigError> {
        let address = match (env.get("XDS_ADDRESS"), env.get("LOCAL_XDS_PATH")) {
            (Some(_), Some(_)) => return Err(ConfigError::ConflictingConfigSources),
            (None, Some(path)) => return Ok(ConfigSource::File(PathBuf::from(path))),
            (Some(address), None) => address,
            (None, None) => default_istiod_address(env).ok_or(ConfigError::NoConfigSource)?,
        };
        Ok(ConfigSource::Xds(Box::new(XdsConfig {
            target: grpc_target(env, &XDS_VARS, address, cluster_id)?,
            node: NodeInfo {
                pod_name: env
                    .get("POD_NAME")
                    .map(str::to_string)
                    .unwrap_or_else(hostname),
                pod_namespace: env.string_or("POD_NAMESPACE", "istio-system"),
                instance_ip: env.string_or("INSTANCE_IP", "127.0.0.1"),
                node_name: node_name.unwrap_or_default().to_string(),
                cluster_id: cluster_id.to_string(),
                cluster_domain: cluster_domain.to_string(),
                // `ISTIO_META_<KEY>=<value>` as node metadata `<KEY>: <value>`, as Istio's
                // proxies forward them (operators pass flags to istiod this way).
                extra_metadata: env.with_prefix("ISTIO_META_").collect(),
            },
        })))
    }
}

/// The machine's host name (a pod's name in Kubernetes), for `POD_NAME`'s default.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "nodetunnel".to_string())
}
