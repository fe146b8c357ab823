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
/// the new holder is applied (clients keep both claimants, but one stale claimant for a moment
/// is still a moment of ambiguity). With
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
mod tests;
