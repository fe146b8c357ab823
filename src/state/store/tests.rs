use super::*;
use crate::state::fixtures::{service, workload};

#[test]
fn indexes_workloads_by_ip_and_uid_and_follows_updates() {
    let mut store = Store::default();
    store.insert_workload(workload("a", "10.0.0.1")).unwrap();
    assert_eq!(
        store
            .workload_by_ip("", "10.0.0.1".parse().unwrap())
            .unwrap()
            .uid,
        "a"
    );
    // Moving the workload to a new IP drops the old index entry.
    store.insert_workload(workload("a", "10.0.0.2")).unwrap();
    assert!(store
        .workload_by_ip("", "10.0.0.1".parse().unwrap())
        .is_none());
    assert!(store
        .workload_by_ip("", "10.0.0.2".parse().unwrap())
        .is_some());
    // Other networks are separate address spaces.
    assert!(store
        .workload_by_ip("net2", "10.0.0.2".parse().unwrap())
        .is_none());
    assert!(store.remove_workload("a").is_some());
    assert!(store
        .workload_by_ip("", "10.0.0.2".parse().unwrap())
        .is_none());
    assert!(store.workload_by_uid("a").is_none());
}

#[test]
fn refuses_an_address_held_by_another_workload() {
    let mut store = Store::default();
    store.insert_workload(workload("a", "10.0.0.1")).unwrap();
    let err = store
        .insert_workload(workload("b", "10.0.0.1"))
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateWorkloadAddress { .. }));
    assert_eq!(
        store
            .workload_by_ip("", "10.0.0.1".parse().unwrap())
            .unwrap()
            .uid,
        "a"
    );
}

#[test]
fn derives_service_endpoints_from_workloads() {
    let mut store = Store::default();
    let svc = service("web.default.svc.cluster.local", "/10.96.0.1");
    let key = svc.key();
    store.insert_service(svc).unwrap();
    let mut a = workload("a", "10.0.0.1");
    a.services.insert(key.clone(), HashMap::from([(80, 9090)]));
    let mut b = workload("b", "10.0.0.2");
    b.services.insert(key.clone(), HashMap::new());
    store.insert_workload(a).unwrap();
    store.insert_workload(b).unwrap();
    let uids: Vec<_> = store
        .endpoints(&key)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(uids, ["a", "b"]);
    store.insert_workload(workload("a", "10.0.0.1")).unwrap(); // a leaves the service
    let uids: Vec<_> = store
        .endpoints(&key)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(uids, ["b"]);
    assert_eq!(
        store
            .service_by_vip("", "10.96.0.1".parse().unwrap())
            .unwrap()
            .key(),
        key
    );
    assert_eq!(
        store
            .services_by_hostname("web.default.svc.cluster.local")
            .len(),
        1
    );
    store.remove_service(&key);
    assert!(store
        .service_by_vip("", "10.96.0.1".parse().unwrap())
        .is_none());
    assert!(store
        .services_by_hostname("web.default.svc.cluster.local")
        .is_empty());
}

#[test]
fn refuses_a_vip_held_by_another_service() {
    let mut store = Store::default();
    store.insert_service(service("a", "/10.96.0.1")).unwrap();
    assert!(matches!(
        store.insert_service(service("b", "/10.96.0.1")),
        Err(StoreError::DuplicateVip { .. })
    ));
}
