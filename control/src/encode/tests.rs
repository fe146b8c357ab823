use std::path::Path;

use prost::Message;

use super::*;
use nodetunnel::state::{load_str, Defaults, Store, StoreDelta};
use nodetunnel::xds::{address_from_proto, authorization_from_proto, AddressResource};

/// The same mesh the local loader's tests read (every field the store models).
const RICH_MESH: &str = include_str!("../../../tests/fixtures/rich-mesh.yaml");

fn defaults() -> Defaults {
    Defaults::default()
}

/// Encodes and decodes, as the resources travel inside an xDS `Any`.
fn wire<M: Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).unwrap()
}

fn rich_store() -> Store {
    load_str(RICH_MESH, Path::new("rich.yaml"), &defaults())
        .unwrap()
        .store
}

#[test]
fn a_rich_mesh_round_trips_through_the_protos() {
    let original = rich_store();
    assert_eq!(original.workloads().len(), 3);
    assert!(original.workloads().any(|w| w.host_network));
    assert_eq!(original.services().len(), 2);
    assert_eq!(original.policies().len(), 3);
    let mut delta = StoreDelta::default();
    for w in original.workloads() {
        match address_from_proto(&w.uid, wire(&workload_to_proto(w)), &defaults()).unwrap() {
            AddressResource::Workload(w) => delta.workloads.push(w),
            other => panic!("a workload came back as {other:?}"),
        }
    }
    for s in original.services() {
        let name = s.key().to_string();
        match address_from_proto(&name, wire(&service_to_proto(s)), &defaults()).unwrap() {
            AddressResource::Service(s) => delta.services.push(s),
            other => panic!("a service came back as {other:?}"),
        }
    }
    for p in original.policies() {
        let policy = authorization_from_proto(&p.key(), wire(&policy_to_proto(p))).unwrap();
        delta.policies.push(policy);
    }
    let mut rebuilt = Store::default();
    rebuilt.apply(delta);
    assert_eq!(rebuilt, original);
}

#[test]
fn the_same_service_always_encodes_to_the_same_bytes() {
    let store = rich_store();
    for s in store.services() {
        let first = service_to_proto(s).encode_to_vec();
        for _ in 0..8 {
            // HashMap iteration order differs between maps; the encoding must not.
            let copy = Service {
                ports: s.ports.iter().map(|(k, v)| (*k, *v)).collect(),
                ..(**s).clone()
            };
            assert_eq!(service_to_proto(&copy).encode_to_vec(), first);
        }
    }
}
