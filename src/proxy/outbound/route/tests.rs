//! `route` over an in-memory store: no sockets, only the decision and what the log says.

use std::collections::HashMap;

use super::*;
use crate::state::fixtures::{service, workload};
use crate::state::{InboundProtocol, ResolveError};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

const CLIENT: &str = "10.77.1.10";
const VIP: &str = "10.96.0.10:80";

/// A client on n1; a server on n2 behind the VIP (80 → 8080, with a SAN); a plain-TCP
/// workload; a workload on n2 that the n1 scope does not serve.
fn mesh() -> Store {
    let mut store = Store::default();
    let mut svc = service("server.default.svc.cluster.local", "/10.96.0.10");
    svc.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/server-san".into()];
    let key = svc.key();
    store.insert_service(svc);
    store.insert_workload(workload("client", CLIENT));
    let mut server = workload("server", "10.77.2.10");
    server.node = "n2".into();
    server.services.insert(key, HashMap::new());
    store.insert_workload(server);
    let mut plain = workload("plain", "10.77.2.30");
    plain.node = "n2".into();
    plain.protocol = InboundProtocol::Tcp;
    store.insert_workload(plain);
    store
}

fn n1() -> Scope {
    Scope {
        node: Some("n1".into()),
        workload: None,
    }
}

fn route_from_client(store: &Store, dst: &str) -> Result<Route, ProxyError> {
    match route(store, "", &n1(), CLIENT.parse().unwrap(), addr(dst), |_| 0)? {
        Routed::Ready(route) => Ok(route),
        Routed::Lookup(pending) => panic!("unexpected lookup of {}", pending.hostname()),
    }
}

#[test]
fn a_vip_routes_over_hbone_to_an_endpoint_and_keeps_the_vip() {
    let store = mesh();
    let r = route_from_client(&store, VIP).unwrap();
    assert_eq!(r.source.name, "client");
    assert_eq!(r.original_dst, addr(VIP));
    assert_eq!(r.target(), addr("10.77.2.10:8080"));
    assert_eq!(
        r.protocol,
        OutboundProtocol::Hbone {
            tunnel: addr("10.77.2.10:15008"),
            expected_identities: vec![id("server"), id("server-san")],
        }
    );

    let d = r.describe(addr("10.77.1.10:40000"));
    assert_eq!(d.direction, "outbound");
    assert_eq!(
        d.original_dst,
        Some(addr(VIP)),
        "the VIP is kept for the log"
    );
    assert_eq!(d.dst, Some(addr("10.77.2.10:8080")), "the chosen endpoint");
    assert_eq!(d.protocol, "HBONE");
    assert_eq!(d.src_identity, Some(id("client")));
    assert_eq!(d.dst_identity, Some(id("server")));
    assert_eq!(d.labels.reporter, "source");
    assert_eq!(d.labels.connection_security_policy, "mutual_tls");
    assert_eq!(
        d.labels.destination_service,
        "server.default.svc.cluster.local"
    );
    assert_eq!(d.labels.source_workload, "client");
    assert_eq!(d.labels.destination_workload, "server");
}

#[test]
fn a_workload_address_routes_over_hbone_to_itself() {
    let store = mesh();
    let r = route_from_client(&store, "10.77.2.10:9000").unwrap();
    assert_eq!(r.target(), addr("10.77.2.10:9000"));
    assert_eq!(
        r.protocol,
        OutboundProtocol::Hbone {
            tunnel: addr("10.77.2.10:15008"),
            expected_identities: vec![id("server")],
        }
    );
    let d = r.describe(addr("10.77.1.10:40000"));
    assert_eq!(d.original_dst, d.dst);
    assert_eq!(d.labels.destination_service, "");
}

#[test]
fn an_address_outside_the_mesh_passes_through_as_tcp() {
    let store = mesh();
    let r = route_from_client(&store, "192.0.2.9:443").unwrap();
    assert_eq!(r.protocol, OutboundProtocol::Tcp);
    assert_eq!(r.target(), addr("192.0.2.9:443"));
    let d = r.describe(addr("10.77.1.10:40000"));
    assert_eq!(d.protocol, "TCP");
    assert_eq!(d.dst, Some(addr("192.0.2.9:443")));
    assert_eq!(d.dst_identity, None);
    assert_eq!(d.labels.connection_security_policy, "unknown");
    assert_eq!(d.labels.destination_workload, "");
}

#[test]
fn a_plain_tcp_workload_is_reached_as_tcp_but_named_in_the_labels() {
    let store = mesh();
    let r = route_from_client(&store, "10.77.2.30:80").unwrap();
    assert_eq!(r.protocol, OutboundProtocol::Tcp);
    let d = r.describe(addr("10.77.1.10:40000"));
    assert_eq!(d.protocol, "TCP");
    assert_eq!(d.dst_identity, None);
    assert_eq!(d.labels.destination_workload, "plain");
}

#[test]
fn a_source_this_scope_does_not_serve_is_refused() {
    let store = mesh();
    // Unknown address.
    let err = route(
        &store,
        "",
        &n1(),
        "10.77.1.99".parse().unwrap(),
        addr(VIP),
        |_| 0,
    )
    .unwrap_err();
    assert!(matches!(err, ProxyError::UnknownSource(ip) if ip.to_string() == "10.77.1.99"));
    // A known workload, but on another node.
    let err = route(
        &store,
        "",
        &n1(),
        "10.77.2.10".parse().unwrap(),
        addr(VIP),
        |_| 0,
    )
    .unwrap_err();
    assert!(matches!(err, ProxyError::UnknownSource(_)), "{err:?}");
}

#[test]
fn an_unknown_service_port_has_no_route() {
    let store = mesh();
    let err = route_from_client(&store, "10.96.0.10:81").unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::Resolve(ResolveError::UnknownServicePort { port: 81, .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.flag(), "no_route");
}

/// Several workloads on the client's address: another node's or the same identity's claimants
/// do not matter; two local ones with different identities leave the source ambiguous, and
/// the connection is refused rather than sent with a guessed identity.
#[test]
fn a_source_address_shared_by_local_workloads_of_different_identities_is_refused() {
    let mut store = mesh();
    // A host-network pod of another node's view and a stale copy of the client (a reused
    // IP): neither makes the source ambiguous.
    let mut elsewhere = workload("Kubernetes//Pod/kube-system/agent-n2", CLIENT);
    elsewhere.node = "n2".into();
    elsewhere.service_account = "agent".into();
    store.insert_workload(elsewhere);
    let mut stale = workload("client-old", CLIENT);
    stale.service_account = "client".into();
    store.insert_workload(stale);
    let r = route_from_client(&store, VIP).unwrap();
    assert_eq!(r.source.identity(), id("client"));

    let mut other = workload("Kubernetes//Pod/default/intruder", CLIENT);
    other.service_account = "intruder".into();
    store.insert_workload(other);
    match route_from_client(&store, VIP) {
        Err(ProxyError::AmbiguousLocal { ip, uids }) => {
            assert_eq!(ip, CLIENT.parse::<IpAddr>().unwrap());
            assert_eq!(uids.len(), 3, "{uids:?}");
            assert!(uids.contains(&"Kubernetes//Pod/default/intruder".to_string()));
        }
        other => panic!("expected an ambiguous source, got {other:?}"),
    }
}

/// Services of two namespaces share a VIP (ServiceEntry): the client's namespace wins.
#[test]
fn a_shared_vip_resolves_to_the_service_in_the_clients_namespace() {
    let mut store = mesh();
    let mut other = service("server.default.svc.cluster.local", "/10.96.0.10");
    other.namespace = "other".into();
    let key = other.key();
    store.insert_service(other);
    let mut backend = workload("other-backend", "10.77.2.40");
    backend.namespace = "other".into();
    backend.node = "n2".into();
    backend.services.insert(key, HashMap::new());
    store.insert_workload(backend);
    let r = route_from_client(&store, VIP).unwrap();
    assert_eq!(r.target(), addr("10.77.2.10:8080"), "default's own service");
    let mut client = (*store.workload_by_uid("client").unwrap()).clone();
    client.namespace = "other".into();
    store.insert_workload(client);
    let r = route_from_client(&store, VIP).unwrap();
    assert_eq!(r.target(), addr("10.77.2.40:8080"), "other's service");
}

/// The mesh with waypoint `wp` (10.77.3.9, its own service `wp.default.svc`) named by the
/// server service, and `plain` naming a waypoint by an address nobody holds.
fn mesh_with_waypoints() -> Store {
    use crate::state::{GatewayAddress, GatewayDestination, NetworkAddress};
    let mut store = mesh();
    let key: crate::state::NamespacedHostname =
        "default/server.default.svc.cluster.local".parse().unwrap();
    let mut svc = (*store.service(&key).unwrap()).clone();
    svc.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Hostname("default/wp.default.svc".parse().unwrap()),
        hbone_mtls_port: 15008,
    });
    store.insert_service(svc);
    let wp_svc = service("wp.default.svc", "/10.96.0.99");
    let wp_key = wp_svc.key();
    store.insert_service(wp_svc);
    let mut wp = workload("wp", "10.77.3.9");
    wp.node = "n1".into();
    wp.services.insert(wp_key, HashMap::new());
    store.insert_workload(wp);
    let mut plain = (*store.workload_by_uid("plain").unwrap()).clone();
    plain.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new(
            "",
            "10.77.9.9".parse().unwrap(),
        )),
        hbone_mtls_port: 15008,
    });
    store.insert_workload(plain);
    store
}

#[test]
fn a_vip_with_a_waypoint_goes_to_the_waypoint_with_the_vip_as_target() {
    let store = mesh_with_waypoints();
    let r = route_from_client(&store, VIP).unwrap();
    assert_eq!(r.waypoint, Some(addr("10.77.3.9:15008")));
    // The CONNECT asks the waypoint for the VIP as dialed; the waypoint's identity is verified.
    assert_eq!(r.target(), addr(VIP));
    assert_eq!(
        r.protocol,
        OutboundProtocol::Hbone {
            tunnel: addr("10.77.3.9:15008"),
            expected_identities: vec![id("wp")],
        }
    );
    let d = r.describe(addr("10.77.1.10:40000"));
    assert_eq!(d.dst, Some(addr(VIP)));
    assert_eq!(d.waypoint, Some(addr("10.77.3.9:15008")));
    assert_eq!(d.dst_identity, Some(id("wp")));
    assert_eq!(
        d.labels.destination_service,
        "server.default.svc.cluster.local"
    );
}

#[test]
fn a_named_waypoint_nobody_holds_refuses_the_connection() {
    let store = mesh_with_waypoints();
    let err = route_from_client(&store, "10.77.2.30:9000").unwrap_err();
    assert_eq!(err.flag(), "waypoint_unavailable");
    assert!(
        err.to_string()
            .contains("workload plain names waypoint /10.77.9.9 (HBONE port 15008)"),
        "{err}"
    );
}

#[test]
fn the_waypoint_reaches_the_destination_directly() {
    let store = mesh_with_waypoints();
    let scope = n1();
    let r = match route(
        &store,
        "",
        &scope,
        "10.77.3.9".parse().unwrap(),
        addr(VIP),
        |_| 0,
    ) {
        Ok(Routed::Ready(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.waypoint, None);
    assert_eq!(r.target(), addr("10.77.2.10:8080"));
}
