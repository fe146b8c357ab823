//! Turning a diff into delta xDS responses of bounded size.
//!
//! gRPC clients refuse messages above a receive limit — 4 MiB by default in tonic, grpc-go and
//! Envoy's gRPC client — and a full push of a large mesh (the bench's 100,000 workloads) is tens
//! of megabytes, so one push becomes several responses, each under [`MAX_RESPONSE_BYTES`] and
//! each with its own nonce (every response is ACKed or NACKed on its own).

use nodetunnel_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use prost::Message;

use super::mesh::{Diff, ResourceType};

/// Target encoded size of one response; half the common 4 MiB receive limit leaves room for
/// framing and for a single resource larger than usual.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// The responses that deliver `diff`, each under `max_bytes` (a single resource larger than
/// that travels alone). Removals come first: when a push is split, an address freed by a removed
/// workload (a pod IP Kubernetes hands to a new pod) must be free before the response carrying
/// the new holder is applied, or the client would refuse that response as a conflict. With
/// `always`, an empty diff still yields one
/// empty response (the initial reply clients wait for to know they are in sync).
pub fn responses(
    ty: ResourceType,
    diff: &Diff,
    system_version: &str,
    max_bytes: usize,
    always: bool,
    mut nonce: impl FnMut() -> String,
) -> Vec<DeltaDiscoveryResponse> {
    let send_empty = always && diff.is_empty();
    let mut out = Vec::new();
    let mut current = empty(ty, system_version);
    let mut size = 0usize;
    let mut flush = |current: &mut DeltaDiscoveryResponse, size: &mut usize| {
        let mut full = std::mem::replace(current, empty(ty, system_version));
        full.nonce = nonce();
        out.push(full);
        *size = 0;
    };
    for name in &diff.removed {
        let len = field_len(name.len());
        if size > 0 && size + len > max_bytes {
            flush(&mut current, &mut size);
        }
        size += len;
        current.removed_resources.push(name.to_string());
    }
    for (name, res) in &diff.changed {
        let resource = Resource {
            name: name.to_string(),
            version: res.version.to_string(),
            resource: Some(res.resource.clone()),
            ..Default::default()
        };
        let len = field_len(resource.encoded_len());
        if size > 0 && size + len > max_bytes {
            flush(&mut current, &mut size);
        }
        size += len;
        current.resources.push(resource);
    }
    if size > 0 || send_empty {
        flush(&mut current, &mut size);
    }
    out
}

fn empty(ty: ResourceType, system_version: &str) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().to_string(),
        system_version_info: system_version.to_string(),
        ..Default::default()
    }
}

/// Encoded size of a length-delimited field holding `len` bytes: tag, length varint, body.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nodetunnel_proto::istio::workload::{address, Address, Workload};

    use super::*;
    use crate::control::mesh::{diff, Held, Mesh};

    fn mesh(n: usize) -> Mesh {
        let mut mesh = Mesh::default();
        for i in 0..n {
            let uid = format!("cluster1//Pod/default/pod-{i:06}");
            mesh.insert_address(
                uid.clone(),
                Address {
                    r#type: Some(address::Type::Workload(Workload {
                        uid,
                        name: format!("pod-{i:06}"),
                        namespace: "default".into(),
                        addresses: vec![(i as u32).to_be_bytes().to_vec()],
                        ..Default::default()
                    })),
                },
            );
        }
        mesh
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            n.to_string()
        }
    }

    /// A pod IP reused by a new pod: the old holder's removal must not trail the new holder
    /// into a later response.
    #[test]
    fn a_split_push_sends_removals_in_its_first_response() {
        let mut d = diff(
            &Held::new(),
            mesh(20_000).resources(ResourceType::Address),
            |_| true,
        );
        d.removed = vec![Arc::from("old-pod-with-the-same-ip")];
        let out = responses(ResourceType::Address, &d, "1", 256 * 1024, false, counter());
        assert!(out.len() > 1, "split into {} responses", out.len());
        assert_eq!(out[0].removed_resources, ["old-pod-with-the-same-ip"]);
        assert!(out[1..].iter().all(|r| r.removed_resources.is_empty()));
    }

    #[test]
    fn large_pushes_split_under_the_limit_with_distinct_nonces() {
        let mesh = mesh(20_000);
        let d = diff(&Held::new(), mesh.resources(ResourceType::Address), |_| {
            true
        });
        let limit = 256 * 1024;
        let out = responses(ResourceType::Address, &d, "1", limit, true, counter());
        assert!(out.len() > 1, "split into {} responses", out.len());
        let total: usize = out.iter().map(|r| r.resources.len()).sum();
        assert_eq!(total, 20_000);
        for r in &out {
            assert!(r.encoded_len() <= limit + 256, "{} bytes", r.encoded_len());
            assert_eq!(r.type_url, ResourceType::Address.type_url());
            assert_eq!(r.system_version_info, "1");
        }
        let mut nonces: Vec<_> = out.iter().map(|r| r.nonce.clone()).collect();
        nonces.sort();
        nonces.dedup();
        assert_eq!(nonces.len(), out.len());
    }

    #[test]
    fn removals_come_first_and_empty_diffs_send_only_when_asked() {
        let d = Diff {
            changed: mesh(1)
                .resources(ResourceType::Address)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            removed: vec![Arc::from("gone")],
        };
        let out = responses(
            ResourceType::Address,
            &d,
            "2",
            MAX_RESPONSE_BYTES,
            false,
            counter(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resources.len(), 1);
        assert_eq!(out[0].removed_resources, ["gone"]);
        assert_eq!(out[0].resources[0].version.len(), 16);

        let none = Diff::default();
        let ty = ResourceType::Authorization;
        assert!(responses(ty, &none, "2", MAX_RESPONSE_BYTES, false, counter()).is_empty());
        let initial = responses(ty, &none, "2", MAX_RESPONSE_BYTES, true, counter());
        assert_eq!(initial.len(), 1);
        assert!(initial[0].resources.is_empty() && initial[0].removed_resources.is_empty());
        assert_eq!(initial[0].type_url, ty.type_url());
        assert!(!initial[0].nonce.is_empty());
    }
}
