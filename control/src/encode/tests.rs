use std::path::Path;

use prost::Message;

use super::*;
use nodetunnel::state::{load_str, Defaults, Store, StoreDelta};
use nodetunnel::xds::{address_from_proto, authorization_from_proto, AddressResource};
use nodetunnel_proto::istio::workload as wl;

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
    // The fixture exercises load balancing, so the round trip covers it too.
    assert!(original.services().any(|s| s.load_balancing.is_some()));
    assert!(original.workloads().any(|w| w.capacity == 0));
    // Waypoints by address (workload) and by hostname (service).
    assert!(original.workloads().any(|w| w.waypoint.is_some()));
    assert!(original.services().any(|s| s.waypoint.is_some()));
    assert!(original.workloads().any(|w| !w.locality.zone.is_empty()));
    assert!(original
        .workloads()
        .any(|w| w.status == HealthStatus::Unhealthy));
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

fn encoded_workload(store: &Store, name: &str) -> wl::Workload {
    let w = store.workloads().find(|w| w.name == name).unwrap();
    match workload_to_proto(w).r#type {
        Some(wl::address::Type::Workload(w)) => w,
        other => panic!("{name} encoded as {other:?}"),
    }
}

fn encoded_service(store: &Store, name: &str) -> wl::Service {
    let s = store.services().find(|s| s.name == name).unwrap();
    match service_to_proto(s).r#type {
        Some(wl::address::Type::Service(s)) => s,
        other => panic!("{name} encoded as {other:?}"),
    }
}

#[test]
fn load_balancing_encodes_as_istio_workload_defines_it() {
    use wl::load_balancing::{HealthPolicy, Mode, Scope};
    let store = rich_store();
    let lb = encoded_service(&store, "server")
        .load_balancing
        .expect("server's load balancing is sent");
    let scopes = [
        Scope::Network,
        Scope::Region,
        Scope::Zone,
        Scope::Subzone,
        Scope::Node,
        Scope::Cluster,
    ];
    assert_eq!(
        lb.routing_preference,
        scopes.map(|s| s as i32).to_vec(),
        "preferences keep their order"
    );
    assert_eq!(lb.mode, Mode::Failover as i32);
    assert_eq!(lb.health_policy, HealthPolicy::AllowAll as i32);
    let db = encoded_service(&store, "db").load_balancing.unwrap();
    assert_eq!(
        (db.mode, db.health_policy, db.routing_preference.len()),
        (Mode::Strict as i32, HealthPolicy::OnlyHealthy as i32, 0)
    );

    // A service without a policy sends none (the tunnel then spreads by capacity alone).
    let mut plain = (**store.services().next().unwrap()).clone();
    plain.load_balancing = None;
    match service_to_proto(&plain).r#type {
        Some(wl::address::Type::Service(s)) => assert_eq!(s.load_balancing, None),
        other => panic!("{other:?}"),
    }
    // Every mode and health policy has its own value.
    let modes = [
        (LbMode::Standard, Mode::UnspecifiedMode),
        (LbMode::Strict, Mode::Strict),
        (LbMode::Failover, Mode::Failover),
        (LbMode::Passthrough, Mode::Passthrough),
    ];
    for (mode, want) in modes {
        let lb = LoadBalancing {
            mode,
            ..LoadBalancing::default()
        };
        assert_eq!(load_balancing_to_proto(&lb).mode, want as i32, "{mode:?}");
    }
}

#[test]
fn locality_capacity_and_health_encode_as_istio_workload_defines_them() {
    let store = rich_store();
    let server = encoded_workload(&store, "server");
    assert_eq!(
        server.locality,
        Some(wl::Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: "s1".into(),
        })
    );
    assert_eq!(server.capacity, Some(3));
    assert_eq!(server.status, wl::WorkloadStatus::Healthy as i32);

    // Capacity 0 stays explicit: unset would read as 1 and make the endpoint eligible.
    let agent = encoded_workload(&store, "node-agent");
    assert_eq!(agent.capacity, Some(0));
    assert_eq!(agent.locality.map(|l| l.zone), Some("z2".into()));

    // The default capacity and an empty locality are left unset, as istiod leaves them.
    let client = encoded_workload(&store, "client");
    assert_eq!((client.capacity, client.locality), (None, None));
    assert_eq!(client.status, wl::WorkloadStatus::Unhealthy as i32);
}
