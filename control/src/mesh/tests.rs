use std::collections::HashMap;

use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload::{address, Address, Port, PortList, Workload};

use super::*;

fn workload(uid: &str, ip: [u8; 4]) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })),
    }
}

fn mesh_of(workloads: &[(&str, [u8; 4])]) -> Mesh {
    let mut mesh = Mesh::default();
    for (uid, ip) in workloads {
        mesh.insert_address(uid.to_string(), workload(uid, *ip));
    }
    mesh
}

fn held_of(mesh: &Mesh) -> Held {
    mesh.resources(ResourceType::Address)
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.version)))
        .collect()
}

fn names(diff: &Diff) -> (Vec<&str>, Vec<&str>) {
    (
        diff.changed.iter().map(|(n, _)| &**n).collect(),
        diff.removed.iter().map(|n| &**n).collect(),
    )
}

#[test]
fn type_urls_round_trip() {
    for ty in ResourceType::ALL {
        assert_eq!(ResourceType::from_type_url(ty.type_url()), Some(ty));
    }
    assert_eq!(
        ResourceType::from_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
        None
    );
}

#[test]
fn versions_follow_content_and_print_as_16_hex_digits() {
    let a = mesh_of(&[("a", [10, 0, 0, 1])]);
    let same = mesh_of(&[("a", [10, 0, 0, 1])]);
    let moved = mesh_of(&[("a", [10, 0, 0, 2])]);
    let v = |m: &Mesh| m.resources(ResourceType::Address)["a"].version;
    assert_eq!(v(&a), v(&same));
    assert_ne!(v(&a), v(&moved));
    let text = v(&a).to_string();
    assert_eq!(text.len(), 16);
    assert_eq!(Version::parse(&text), Some(v(&a)));
    assert_eq!(Version::parse("not-a-version"), None);
    assert_eq!(Version::parse(""), None);
}

#[test]
fn version_ignores_map_and_port_order() {
    // The store keeps services and ports in hash maps, so two loads of one file can list them
    // in different orders; the version must not change.
    let port = |s, t| Port {
        service_port: s,
        target_port: t,
    };
    let with = |order: &[&str], ports: Vec<Port>| {
        let mut services = HashMap::new();
        for key in order {
            services.insert(
                key.to_string(),
                PortList {
                    ports: ports.clone(),
                },
            );
        }
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: "a".into(),
                services,
                ..Default::default()
            })),
        }
    };
    let keys: Vec<String> = (0..16).map(|i| format!("default/svc{i}")).collect();
    let forward: Vec<&str> = keys.iter().map(String::as_str).collect();
    let backward: Vec<&str> = forward.iter().rev().copied().collect();
    let v1 = address_version(&with(&forward, vec![port(80, 8080), port(443, 8443)]));
    let v2 = address_version(&with(&backward, vec![port(443, 8443), port(80, 8080)]));
    assert_eq!(v1, v2);
    let v3 = address_version(&with(&forward, vec![port(80, 9090), port(443, 8443)]));
    assert_ne!(v1, v3);
}

#[test]
fn diff_from_nothing_sends_everything() {
    let mesh = mesh_of(&[("b", [10, 0, 0, 2]), ("a", [10, 0, 0, 1])]);
    let d = diff(&Held::new(), mesh.resources(ResourceType::Address), |_| {
        true
    });
    assert_eq!(names(&d), (vec!["a", "b"], vec![]));
}

#[test]
fn diff_sends_only_changes_and_removals() {
    let old = mesh_of(&[
        ("a", [10, 0, 0, 1]),
        ("b", [10, 0, 0, 2]),
        ("c", [10, 0, 0, 3]),
    ]);
    let new = mesh_of(&[
        ("a", [10, 0, 0, 1]),
        ("b", [10, 0, 0, 22]),
        ("d", [10, 0, 0, 4]),
    ]);
    let mut held = held_of(&old);
    let d = diff(&held, new.resources(ResourceType::Address), |_| true);
    assert_eq!(names(&d), (vec!["b", "d"], vec!["c"]));
    apply(&mut held, &d);
    assert_eq!(held, held_of(&new));
    assert!(diff(&held, new.resources(ResourceType::Address), |_| true).is_empty());
}

#[test]
fn unknown_versions_are_resent_and_filters_apply() {
    let mesh = mesh_of(&[("a", [10, 0, 0, 1]), ("b", [10, 0, 0, 2])]);
    let mut held = held_of(&mesh);
    held.insert("a".into(), None);
    let d = diff(&held, mesh.resources(ResourceType::Address), |_| true);
    assert_eq!(names(&d), (vec!["a"], vec![]));
    let d = diff(&Held::new(), mesh.resources(ResourceType::Address), |n| {
        n == "b"
    });
    assert_eq!(names(&d), (vec!["b"], vec![]));
}

#[test]
fn authorizations_and_identities_are_kept_apart() {
    let mut mesh = Mesh::default();
    mesh.insert_authorization(
        "default/allow".into(),
        Authorization {
            name: "allow".into(),
            namespace: "default".into(),
            ..Default::default()
        },
    );
    let id = Identity::new("cluster.local", "default", "sa");
    mesh.insert_identity(id.clone(), "node-a");
    assert_eq!(mesh.resources(ResourceType::Authorization).len(), 1);
    assert!(mesh.resources(ResourceType::Address).is_empty());
    let any = &mesh.resources(ResourceType::Authorization)["default/allow"].resource;
    assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
    assert!(mesh.has_identity(&id));
    assert!(!mesh.has_identity(&Identity::new("cluster.local", "default", "other")));
}

#[test]
fn identities_remember_every_node_that_runs_them() {
    let mut mesh = Mesh::default();
    let id = Identity::new("cluster.local", "default", "sa");
    mesh.insert_identity(id.clone(), "node-b");
    mesh.insert_identity(id.clone(), "node-a");
    mesh.insert_identity(id.clone(), "node-b");
    let vm = Identity::new("cluster.local", "default", "vm");
    mesh.insert_identity(vm.clone(), "");
    let nodes: Vec<&str> = mesh
        .nodes_running(&id)
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
    // A workload without a node makes its identity known, on no node.
    assert!(mesh.has_identity(&vm));
    assert_eq!(mesh.nodes_running(&vm).map(|n| n.len()), Some(0));
    assert_eq!(
        mesh.nodes_running(&Identity::new("cluster.local", "default", "nobody")),
        None
    );
    assert_eq!(mesh.identity_count(), 2);
}
