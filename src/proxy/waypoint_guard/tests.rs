use std::sync::Arc;

use super::*;
use crate::state::fixtures::workload;
use crate::state::{GatewayAddress, GatewayDestination, NetworkAddress};

/// `server` (10.0.0.2) names the waypoint workload `wp` (10.0.0.9) by address.
fn mesh() -> (Store, InboundTarget) {
    let mut store = Store::default();
    let mut server = workload("server", "10.0.0.2");
    server.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new(
            "",
            "10.0.0.9".parse().unwrap(),
        )),
        hbone_mtls_port: 15008,
    });
    store.insert_workload(server);
    store.insert_workload(workload("wp", "10.0.0.9"));
    store.insert_workload(workload("client", "10.0.0.1"));
    let target = InboundTarget {
        addr: "10.0.0.2:8080".parse().unwrap(),
        workload: store.workload_by_uid("server").unwrap(),
    };
    (store, target)
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

#[test]
fn the_waypoint_is_let_through() {
    let (store, target) = mesh();
    let from_wp = check_from_waypoint(
        &store,
        &target,
        Some(&id("wp")),
        "10.0.0.9".parse().unwrap(),
    );
    assert!(from_wp.is_ok(), "{from_wp:?}");
}

#[test]
fn anyone_else_is_refused_with_the_bypass_flag() {
    let (store, target) = mesh();
    for (identity, ip) in [
        (Some(id("client")), "10.0.0.1"),
        // The waypoint's identity from another address, and plaintext from its address.
        (Some(id("wp")), "10.0.0.1"),
        (None, "10.0.0.9"),
    ] {
        let err = check_from_waypoint(&store, &target, identity.as_ref(), ip.parse().unwrap())
            .unwrap_err();
        assert_eq!(err.flag(), "waypoint_bypass");
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        assert!(err.to_string().contains("has waypoint /10.0.0.9"), "{err}");
    }
}

#[test]
fn a_workload_without_a_waypoint_takes_anyone() {
    let (mut store, _) = mesh();
    store.insert_workload(workload("plain", "10.0.0.3"));
    let target = InboundTarget {
        addr: "10.0.0.3:80".parse().unwrap(),
        workload: Arc::new(workload("plain", "10.0.0.3")),
    };
    assert!(check_from_waypoint(&store, &target, None, "10.0.0.1".parse().unwrap()).is_ok());
}
