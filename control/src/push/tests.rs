use std::sync::Arc;

use nodetunnel_proto::istio::workload::{address, Address, Workload};

use super::*;
use crate::mesh::{diff, Held, Mesh};

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
