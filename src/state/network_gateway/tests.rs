use std::collections::HashMap;

use super::*;
use crate::state::fixtures::{service, workload};
use crate::state::types::GatewayAddress;
use crate::state::types::{GatewayDestination, NetworkAddress};
use crate::state::Resolution;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn gateway_by_ip(network: &str, ip: &str, port: u16) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new(network, ip.parse().unwrap())),
        hbone_mtls_port: port,
    }
}

/// `client` (10.0.0.1, network ""); service `web` (VIP /10.96.0.1, 80 → 8080) whose endpoints
/// `remote-a` and `remote-b` are on network `net-b` (no addresses the client could use), both
/// behind gateway `net-b/10.9.0.1:15009`, the workload `ew` (sa `eastwest`).
fn mesh() -> Store {
    let mut store = Store::default();
    let web = service("web.default.svc", "/10.96.0.1");
    let key = web.key();
    store.insert_service(web);
    for (uid, ip, sa) in [("remote-a", "10.2.0.1", "a"), ("remote-b", "10.2.0.2", "b")] {
        let mut w = workload(uid, ip);
        w.network = "net-b".into();
        w.service_account = sa.into();
        w.protocol = InboundProtocol::Hbone;
        w.services.insert(key.clone(), HashMap::new());
        w.network_gateway = Some(gateway_by_ip("net-b", "10.9.0.1", 15009));
        store.insert_workload(w);
    }
    let mut ew = workload("ew", "10.9.0.1");
    ew.network = "net-b".into();
    ew.service_account = "eastwest".into();
    store.insert_workload(ew);
    store.insert_workload(workload("client", "10.0.0.1"));
    store
}

fn remote(store: &Store) -> RemoteEndpoint {
    match store
        .resolve("", Some("default"), None, addr("10.96.0.1:80"), |_| 0)
        .unwrap()
    {
        Resolution::Remote(r) => r,
        other => panic!("expected a remote endpoint, got {other:?}"),
    }
}

#[test]
fn an_endpoint_on_another_network_resolves_to_remote_never_to_its_address() {
    let store = mesh();
    let r = remote(&store);
    assert_eq!(r.workload.network, "net-b");
    assert_eq!(r.service_port, 80);
}

#[test]
fn the_route_goes_to_the_gateway_with_the_service_hostname_and_every_remote_identity() {
    let store = mesh();
    let client = store.workload_by_uid("client").unwrap();
    let double = store
        .through_network_gateway(&remote(&store), "", &client, addr("10.96.0.1:80"), |_| 0)
        .unwrap();
    assert_eq!(double.gateway.address, addr("10.9.0.1:15009"));
    assert_eq!(
        double.gateway.expected_identities()[0].service_account,
        "eastwest"
    );
    assert_eq!(double.target, "web.default.svc:80");
    let sas: Vec<&str> = double
        .final_identities
        .iter()
        .map(|i| i.service_account.as_str())
        .collect();
    assert!(sas.contains(&"a") && sas.contains(&"b"), "{sas:?}");
    assert!(!sas.contains(&"eastwest"), "{sas:?}");
}

#[test]
fn no_gateway_unknown_gateway_and_unhealthy_gateway_fail_closed() {
    let mut store = mesh();
    let client = store.workload_by_uid("client").unwrap();
    let dialed = addr("10.96.0.1:80");
    let mut without: Workload = (*store.workload_by_uid("remote-a").unwrap()).clone();
    without.network_gateway = None;
    let r = RemoteEndpoint {
        workload: Arc::new(without),
        ..remote(&store)
    };
    let e = store
        .through_network_gateway(&r, "", &client, dialed, |_| 0)
        .unwrap_err();
    assert!(matches!(e, NetworkGatewayError::NoGateway { .. }), "{e}");
    assert!(e.to_string().contains("names no network gateway"), "{e}");

    let mut unknown: Workload = (*r.workload).clone();
    unknown.network_gateway = Some(gateway_by_ip("net-b", "10.9.0.77", 15009));
    let r = RemoteEndpoint {
        workload: Arc::new(unknown),
        ..remote(&store)
    };
    let e = store
        .through_network_gateway(&r, "", &client, dialed, |_| 0)
        .unwrap_err();
    assert!(matches!(e, NetworkGatewayError::Unknown { .. }), "{e}");

    let mut ew: Workload = (*store.workload_by_uid("ew").unwrap()).clone();
    ew.status = crate::state::HealthStatus::Unhealthy;
    store.insert_workload(ew);
    let e = store
        .through_network_gateway(&remote(&store), "", &client, dialed, |_| 0)
        .unwrap_err();
    assert!(
        matches!(e, NetworkGatewayError::NoHealthyInstance { .. }),
        "{e}"
    );
}

#[test]
fn a_gateway_forwards_only_to_healthy_hbone_endpoints_on_its_network() {
    let mut store = mesh();
    let (w, _, to) = store
        .gateway_forward_endpoint("net-b", "default", "web.default.svc", 80, |_| 0)
        .unwrap();
    assert_eq!(w.uid, "remote-a");
    assert_eq!(to, addr("10.2.0.1:15008"));
    // Another network's endpoints are not the gateway's to reach.
    let e = store
        .gateway_forward_endpoint("net-c", "default", "web.default.svc", 80, |_| 0)
        .unwrap_err();
    assert!(matches!(e, GatewayForwardError::NoEndpoint { .. }), "{e}");
    // A plain-TCP endpoint cannot take an inner HBONE layer.
    for uid in ["remote-a", "remote-b"] {
        let mut w: Workload = (*store.workload_by_uid(uid).unwrap()).clone();
        w.protocol = InboundProtocol::Tcp;
        store.insert_workload(w);
    }
    let e = store
        .gateway_forward_endpoint("net-b", "default", "web.default.svc", 80, |_| 0)
        .unwrap_err();
    assert!(matches!(e, GatewayForwardError::NoEndpoint { .. }), "{e}");
    let e = store
        .gateway_forward_endpoint("net-b", "default", "web.default.svc", 81, |_| 0)
        .unwrap_err();
    assert!(matches!(e, GatewayForwardError::UnknownPort { .. }), "{e}");
    let e = store
        .gateway_forward_endpoint("net-b", "default", "nope.default.svc", 80, |_| 0)
        .unwrap_err();
    assert!(
        matches!(e, GatewayForwardError::UnknownService { .. }),
        "{e}"
    );
}
