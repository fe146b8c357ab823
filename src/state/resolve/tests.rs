use std::collections::HashMap;

use super::*;
use crate::state::fixtures::{service, workload};
use crate::state::types::HealthStatus;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn mesh() -> (Store, NamespacedHostname) {
    let mut store = Store::default();
    let mut svc = service("web.default.svc.cluster.local", "/10.96.0.1");
    svc.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/web-san".into()];
    let key = svc.key();
    store.insert_service(svc);
    let mut a = workload("a", "10.0.0.1");
    a.services.insert(key.clone(), HashMap::from([(80, 9090)]));
    let mut b = workload("b", "10.0.0.2");
    b.services.insert(key.clone(), HashMap::new());
    store.insert_workload(a);
    store.insert_workload(b);
    (store, key)
}

#[test]
fn workload_ip_resolves_to_that_workload() {
    let (store, _) = mesh();
    let up = store
        .resolve("", None, None, addr("10.0.0.2:7000"), |_| 0)
        .unwrap()
        .ready();
    assert!(up.uses_hbone());
    assert_eq!(up.target(), addr("10.0.0.2:7000"));
    assert_eq!(
        up.expected_identities(),
        vec![Identity::new("cluster.local", "default", "b")]
    );
}

#[test]
fn unknown_ip_passes_through() {
    let (store, _) = mesh();
    let up = store
        .resolve("", None, None, addr("192.0.2.9:443"), |_| 0)
        .unwrap()
        .ready();
    assert_eq!(up, Upstream::Passthrough(addr("192.0.2.9:443")));
    assert!(!up.uses_hbone());
    assert!(up.expected_identities().is_empty());
}

#[test]
fn tcp_workload_does_not_use_hbone() {
    let (mut store, _) = mesh();
    let mut w = workload("plain", "10.0.0.9");
    w.protocol = InboundProtocol::Tcp;
    store.insert_workload(w);
    assert!(!store
        .resolve("", None, None, addr("10.0.0.9:80"), |_| 0)
        .unwrap()
        .ready()
        .uses_hbone());
}

#[test]
fn vip_maps_ports_and_spreads_across_endpoints() {
    let (store, _) = mesh();
    // Endpoint a overrides the target port; b uses the service default.
    let a = store
        .resolve("", None, None, addr("10.96.0.1:80"), |_| 0)
        .unwrap()
        .ready();
    assert_eq!(a.target(), addr("10.0.0.1:9090"));
    let b = store
        .resolve("", None, None, addr("10.96.0.1:80"), |_| 1)
        .unwrap()
        .ready();
    assert_eq!(b.target(), addr("10.0.0.2:8080"));
    let ids = b.expected_identities();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1].service_account, "web-san");
}

#[test]
fn vip_errors_are_specific() {
    let (mut store, key) = mesh();
    assert_eq!(
        store
            .resolve("", None, None, addr("10.96.0.1:81"), |_| 0)
            .unwrap_err(),
        ResolveError::UnknownServicePort {
            service: key.clone(),
            port: 81
        }
    );
    for uid in ["a", "b"] {
        let mut w = (*store.workload_by_uid(uid).unwrap()).clone();
        w.status = HealthStatus::Unhealthy;
        store.insert_workload(w);
    }
    assert_eq!(
        store
            .resolve("", None, None, addr("10.96.0.1:80"), |_| 0)
            .unwrap_err(),
        ResolveError::NoHealthyEndpoint { service: key }
    );
}

#[test]
fn a_services_ip_families_choose_the_endpoint_address() {
    let (mut store, key) = mesh();
    for uid in ["a", "b"] {
        store.remove_workload(uid);
    }
    let mut dual = workload("dual", "10.0.0.5");
    dual.workload_ips.push("fd00::5".parse().unwrap());
    dual.services.insert(key.clone(), HashMap::new());
    store.insert_workload(dual);
    let target = |store: &Store| {
        store
            .resolve("", None, None, addr("10.96.0.1:80"), |_| 0)
            .map(|r| r.ready().target())
    };
    // Automatic: the dialed (IPv4) family.
    assert_eq!(target(&store), Ok(addr("10.0.0.5:8080")));
    let mut svc = (*store.service(&key).unwrap()).clone();
    svc.ip_families = Some(IpFamily::V6);
    store.insert_service(svc.clone());
    assert_eq!(target(&store), Ok(addr("[fd00::5]:8080")));
    // IPv6 only, and the endpoint has no IPv6 address: refused, saying why.
    let mut v4 = workload("dual", "10.0.0.5");
    v4.services.insert(key.clone(), HashMap::new());
    store.insert_workload(v4);
    let err = target(&store).unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::EndpointWithoutAddress {
                family: Some(IpFamily::V6),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("IPv6 only"), "{err}");
}

#[test]
fn an_endpoint_known_by_hostname_is_looked_up_then_finished() {
    let (mut store, key) = mesh();
    for uid in ["a", "b"] {
        store.remove_workload(uid);
    }
    let mut ext = workload("ext", "10.0.0.5");
    ext.workload_ips.clear();
    ext.hostname = "api.example.com".into();
    ext.protocol = InboundProtocol::Tcp;
    ext.services.insert(key.clone(), HashMap::from([(80, 443)]));
    store.insert_workload(ext);
    let Resolution::Lookup(pending) = store
        .resolve("", None, None, addr("10.96.0.1:80"), |_| 0)
        .unwrap()
    else {
        panic!("expected a lookup");
    };
    assert_eq!(pending.hostname(), "api.example.com");
    let answers: Vec<IpAddr> = ["fd00::1", "192.0.2.1", "192.0.2.2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // The dialed family (IPv4) is preferred; pick chooses among those.
    let up = pending.clone().at(&answers, |n| n - 1).unwrap();
    assert_eq!(up.target(), addr("192.0.2.2:443"));
    assert!(!up.uses_hbone());
    let up = pending.clone().at(&answers[..1], |_| 0).unwrap();
    assert_eq!(
        up.target(),
        addr("[fd00::1]:443"),
        "another family when it is all there is"
    );
    // The service's families filter the answers; none left is an error naming the host.
    let mut svc = (*store.service(&key).unwrap()).clone();
    svc.ip_families = Some(IpFamily::V6);
    let v6_only = HostnameEndpoint {
        service: Arc::new(svc),
        ..pending.clone()
    };
    let err = v6_only.at(&answers[1..], |_| 0).unwrap_err();
    assert!(err.to_string().contains("api.example.com"), "{err}");
    assert!(pending.at(&[], |_| 0).is_err());
}
