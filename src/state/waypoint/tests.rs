use std::collections::HashMap;

use super::*;
use crate::state::fixtures::{service, workload};
use crate::state::types::NetworkAddress;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn by_hostname(key: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname(key.parse().unwrap()),
        hbone_mtls_port: 15008,
    }
}

fn by_ip(ip: &str, port: u16) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("", ip.parse().unwrap())),
        hbone_mtls_port: port,
    }
}

/// `web` (VIP 10.96.0.1) with endpoint `server` (10.0.0.2), both naming the waypoint service
/// `default/wp.default.svc` (VIP 10.96.0.9) whose one instance is `wp` (10.0.0.9); `client`
/// at 10.0.0.1.
fn mesh() -> Store {
    let mut store = Store::default();
    let mut web = service("web.default.svc", "/10.96.0.1");
    web.waypoint = Some(by_hostname("default/wp.default.svc"));
    let web_key = web.key();
    store.insert_service(web);
    let wp_svc = service("wp.default.svc", "/10.96.0.9");
    let wp_key = wp_svc.key();
    store.insert_service(wp_svc);
    let mut server = workload("server", "10.0.0.2");
    server.services.insert(web_key, HashMap::new());
    server.waypoint = Some(by_hostname("default/wp.default.svc"));
    store.insert_workload(server);
    let mut wp = workload("wp", "10.0.0.9");
    wp.services.insert(wp_key, HashMap::new());
    store.insert_workload(wp);
    store.insert_workload(workload("client", "10.0.0.1"));
    store
}

fn client(store: &Store) -> Arc<Workload> {
    store.workload_by_uid("client").unwrap()
}

#[test]
fn a_service_vip_follows_the_services_waypoint() {
    let store = mesh();
    let required = store
        .required_waypoint("", &client(&store), addr("10.96.0.1:80"))
        .unwrap();
    assert_eq!(required.owner, "service default/web.default.svc");
    let hop = store
        .resolve_waypoint(&required, &client(&store), addr("10.96.0.1:80"), |_| 0)
        .unwrap();
    assert_eq!(hop.workload.uid, "wp");
    assert_eq!(hop.address, addr("10.0.0.9:15008"));
    assert_eq!(
        hop.expected_identities(),
        vec![Identity::new("cluster.local", "default", "wp")]
    );
}

#[test]
fn a_workload_address_follows_the_workloads_waypoint() {
    let store = mesh();
    let required = store
        .required_waypoint("", &client(&store), addr("10.0.0.2:8080"))
        .unwrap();
    assert_eq!(required.owner, "workload server");
    assert!(required.service.is_none());
}

#[test]
fn no_waypoint_means_no_detour() {
    let mut store = mesh();
    let plain = service("plain.default.svc", "/10.96.0.2");
    store.insert_service(plain);
    let c = client(&store);
    assert_eq!(store.required_waypoint("", &c, addr("10.96.0.2:80")), None);
    // The client itself has no waypoint; unknown addresses have none either.
    assert_eq!(store.required_waypoint("", &c, addr("10.0.0.1:80")), None);
    assert_eq!(store.required_waypoint("", &c, addr("192.0.2.1:80")), None);
}

#[test]
fn the_waypoint_itself_is_not_sent_to_its_waypoint() {
    let store = mesh();
    let wp = store.workload_by_uid("wp").unwrap();
    assert_eq!(store.required_waypoint("", &wp, addr("10.96.0.1:80")), None);
    assert_eq!(
        store.required_waypoint("", &wp, addr("10.0.0.2:8080")),
        None
    );
}

#[test]
fn an_unknown_or_empty_waypoint_fails_closed() {
    let mut store = mesh();
    let c = client(&store);
    let mut required = store
        .required_waypoint("", &c, addr("10.96.0.1:80"))
        .unwrap();
    required.waypoint = by_hostname("default/missing.default.svc");
    let err = store
        .resolve_waypoint(&required, &c, addr("10.96.0.1:80"), |_| 0)
        .unwrap_err();
    assert!(matches!(err, WaypointError::Unknown { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "service default/web.default.svc names waypoint default/missing.default.svc (HBONE port 15008), which the mesh state does not know"
    );
    required.waypoint = by_ip("10.0.0.77", 15008);
    assert!(matches!(
        store.resolve_waypoint(&required, &c, addr("10.96.0.1:80"), |_| 0),
        Err(WaypointError::Unknown { .. })
    ));
    // The waypoint's service without a healthy instance.
    let mut wp = (*store.workload_by_uid("wp").unwrap()).clone();
    wp.status = HealthStatus::Unhealthy;
    store.insert_workload(wp);
    required.waypoint = by_hostname("default/wp.default.svc");
    assert!(matches!(
        store.resolve_waypoint(&required, &c, addr("10.96.0.1:80"), |_| 0),
        Err(WaypointError::NoHealthyInstance { .. })
    ));
}

#[test]
fn a_waypoint_by_ip_uses_that_ip_and_port() {
    let store = mesh();
    let c = client(&store);
    let required = RequiredWaypoint {
        owner: "workload server".into(),
        waypoint: by_ip("10.0.0.9", 15009),
        service: None,
    };
    let hop = store
        .resolve_waypoint(&required, &c, addr("10.0.0.2:8080"), |_| 0)
        .unwrap();
    assert_eq!(hop.address, addr("10.0.0.9:15009"));
    assert_eq!(hop.workload.uid, "wp");
    // By the waypoint service's VIP: one of its endpoints.
    let required = RequiredWaypoint {
        waypoint: by_ip("10.96.0.9", 15008),
        ..required
    };
    let hop = store
        .resolve_waypoint(&required, &c, addr("10.0.0.2:8080"), |_| 0)
        .unwrap();
    assert_eq!(hop.address, addr("10.0.0.9:15008"));
}

#[test]
fn only_the_waypoints_identity_from_its_address_counts_as_from_it() {
    let store = mesh();
    let wp = by_hostname("default/wp.default.svc");
    let wp_id = Identity::new("cluster.local", "default", "wp");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(store.is_from_waypoint(&wp, &wp_id, ip("10.0.0.9")));
    // Its identity from another address, or another identity from its address: not it.
    assert!(!store.is_from_waypoint(&wp, &wp_id, ip("10.0.0.1")));
    let client_id = Identity::new("cluster.local", "default", "client");
    assert!(!store.is_from_waypoint(&wp, &client_id, ip("10.0.0.9")));
    assert!(!store.is_from_waypoint(
        &by_hostname("default/missing.default.svc"),
        &wp_id,
        ip("10.0.0.9")
    ));
}
