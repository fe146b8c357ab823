//! Writes the seeds of the daemon's `xds_resources` fuzz target (`fuzz/corpus/xds_resources/`)
//! from this encoder, so they are the resources a real control plane pushes: the repository's
//! rich mesh, as one Address response and one Authorization response. The daemon's
//! `tests/fuzz_corpus.rs` replays them. Run after a change to the resources' shape:
//! `cargo test -p nodetunnel-control fuzz_seeds -- --ignored`.

use std::path::Path;

use nodetunnel::state::{load_str, Defaults};
use nodetunnel_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;

use super::{policy_to_proto, service_to_proto, workload_to_proto};

fn response(type_url: &str, resources: Vec<(String, Vec<u8>)>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.to_string(),
        system_version_info: "1".into(),
        nonce: "n1".into(),
        resources: resources
            .into_iter()
            .map(|(name, value)| Resource {
                name,
                version: "1".into(),
                resource: Some(prost_types::Any {
                    type_url: type_url.to_string(),
                    value,
                }),
                ..Default::default()
            })
            .collect(),
        removed_resources: vec!["Kubernetes//v1/Pod/default/gone".into()],
        ..Default::default()
    }
}

#[test]
#[ignore = "writes fuzz seeds: cargo test -p nodetunnel-control fuzz_seeds -- --ignored"]
fn write_xds_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = std::fs::read_to_string(root.join("tests/fixtures/rich-mesh.yaml")).unwrap();
    let store = load_str(&yaml, Path::new("rich-mesh.yaml"), &Defaults::default())
        .unwrap()
        .store;
    let mut addresses: Vec<(String, Vec<u8>)> = store
        .workloads()
        .map(|w| (w.uid.clone(), workload_to_proto(w).encode_to_vec()))
        .collect();
    addresses.extend(
        store
            .services()
            .map(|s| (s.key().to_string(), service_to_proto(s).encode_to_vec())),
    );
    let policies: Vec<(String, Vec<u8>)> = store
        .policies()
        .map(|p| (p.key(), policy_to_proto(p).encode_to_vec()))
        .collect();
    assert!(
        !addresses.is_empty() && !policies.is_empty(),
        "the rich mesh has both kinds"
    );
    let dir = root.join("fuzz/corpus/xds_resources");
    std::fs::create_dir_all(&dir).unwrap();
    // Byte 0 picks the type: even Address, odd Authorization (nodetunnel::fuzzing).
    for (name, kind, resources) in [
        (
            "addresses",
            0u8,
            response(WORKLOAD_ADDRESS_TYPE_URL, addresses),
        ),
        (
            "authorizations",
            1u8,
            response(AUTHORIZATION_TYPE_URL, policies),
        ),
    ] {
        let mut bytes = vec![kind];
        bytes.extend(resources.encode_to_vec());
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
