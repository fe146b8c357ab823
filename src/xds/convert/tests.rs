use std::path::Path;

use super::*;
use crate::state::load_str;

const UID: &str = "cluster1//v1/Pod/default/a";
const SERVICE: &str = "default/web.default.svc";

fn defaults() -> Defaults {
    Defaults::default()
}

fn valid_workload() -> wl::Workload {
    wl::Workload {
        uid: UID.into(),
        name: "a".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        ..Default::default()
    }
}

fn valid_service() -> wl::Service {
    wl::Service {
        name: "web".into(),
        namespace: "default".into(),
        hostname: "web.default.svc".into(),
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
        }],
        ..Default::default()
    }
}

fn valid_policy() -> Authorization {
    Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match::default()],
            }],
        }],
        ..Default::default()
    }
}

fn workload_address(w: wl::Workload) -> Address {
    Address {
        r#type: Some(wl::address::Type::Workload(w)),
    }
}

fn service_address(s: wl::Service) -> Address {
    Address {
        r#type: Some(wl::address::Type::Service(s)),
    }
}

fn convert_workload(w: wl::Workload) -> Workload {
    match address_from_proto(UID, workload_address(w), &defaults()) {
        Ok(AddressResource::Workload(w)) => w,
        other => panic!("expected a workload, got {other:?}"),
    }
}

fn convert_service(s: wl::Service) -> Service {
    match address_from_proto(SERVICE, service_address(s), &defaults()) {
        Ok(AddressResource::Service(s)) => s,
        other => panic!("expected a service, got {other:?}"),
    }
}

/// The error for a valid workload changed by `change`, as "field: reason".
fn workload_error(change: impl FnOnce(&mut wl::Workload)) -> String {
    let mut w = valid_workload();
    change(&mut w);
    field_error(address_from_proto(UID, workload_address(w), &defaults()))
}

fn service_error(change: impl FnOnce(&mut wl::Service)) -> String {
    let mut s = valid_service();
    change(&mut s);
    field_error(address_from_proto(SERVICE, service_address(s), &defaults()))
}

fn policy_error(change: impl FnOnce(&mut Authorization)) -> String {
    let mut p = valid_policy();
    change(&mut p);
    field_error(authorization_from_proto("ns/p", p))
}

fn field_error<T: fmt::Debug>(result: Result<T, ProtoError>) -> String {
    match result {
        Err(ProtoError::Invalid { field, reason, .. }) => format!("{field}: {reason}"),
        Err(ProtoError::Unsupported { field, reason, .. }) => {
            format!("unsupported {field}: {reason}")
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn first_match(p: &mut Authorization) -> &mut sec::Match {
    &mut p.rules[0].clauses[0].matches[0]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn error_names_the_resource_field_and_reason() {
    let mut w = valid_workload();
    w.addresses.push(vec![1, 2, 3, 4, 5]);
    let err = address_from_proto(UID, workload_address(w), &defaults()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"resource "cluster1//v1/Pod/default/a": workload.addresses[1]: 5 bytes, expected 4 (IPv4) or 16 (IPv6)"#
    );
}

#[test]
fn an_address_without_workload_or_service_is_refused() {
    let err = field_error(address_from_proto(UID, Address::default(), &defaults()));
    assert!(err.starts_with("type: empty"), "{err}");
}

#[test]
fn workload_uid_must_be_set_and_match_the_resource_name() {
    assert_eq!(
        workload_error(|w| w.uid.clear()),
        "workload.uid: must not be empty"
    );
    let err = workload_error(|w| w.uid = "cluster1//v1/Pod/default/b".into());
    assert!(err.contains("differs from the resource name"), "{err}");
}

#[test]
fn workload_namespace_must_be_set() {
    assert_eq!(
        workload_error(|w| w.namespace.clear()),
        "workload.namespace: must not be empty"
    );
}

#[test]
fn workload_addresses_must_be_ipv4_or_ipv6() {
    assert_eq!(
        workload_error(|w| w.addresses = vec![vec![]]),
        "workload.addresses[0]: 0 bytes, expected 4 (IPv4) or 16 (IPv6)"
    );
    let mut w = valid_workload();
    w.addresses
        .push(vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(
        convert_workload(w).workload_ips,
        [ip("10.0.0.1"), ip("fd00::1")]
    );
}

#[test]
fn unknown_enum_values_skip_the_resource_or_the_field_as_ztunnel_does() {
    // Where ztunnel drops the resource: Unsupported (skipped with a warning, not NACKed).
    assert_eq!(
        workload_error(|w| w.tunnel_protocol = 7),
        "unsupported workload.tunnel_protocol: unknown enum value 7"
    );
    assert_eq!(
        workload_error(|w| w.status = -1),
        "unsupported workload.status: unknown enum value -1"
    );
    assert_eq!(
        policy_error(|p| p.scope = 3),
        "unsupported scope: unknown enum value 3"
    );
    assert_eq!(
        policy_error(|p| p.action = 2),
        "unsupported action: unknown enum value 2"
    );
    assert_eq!(
        workload_error(|w| w.network_mode = 9),
        "unsupported workload.network_mode: unknown enum value 9"
    );
    // Where ztunnel reads the default: the field is ignored.
    let mut w = valid_workload();
    w.workload_type = 9;
    let AddressResource::Workload(w) =
        address_from_proto(UID, workload_address(w), &defaults()).unwrap()
    else {
        panic!("a workload")
    };
    assert_eq!(w.workload_type, "deployment");
}

#[test]
fn workload_services_keys_and_ports_are_checked() {
    let ports = |service_port, target_port| wl::PortList {
        ports: vec![wl::Port {
            service_port,
            target_port,
        }],
    };
    let err = workload_error(|w| {
        w.services.insert("no-namespace".into(), ports(80, 80));
    });
    assert!(
        err.starts_with(r#"workload.services["no-namespace"]: "no-namespace" is not"#),
        "{err}"
    );
    assert_eq!(
        workload_error(|w| {
            w.services.insert("default/web".into(), ports(0, 80));
        }),
        r#"workload.services["default/web"].ports[0].service_port: port 0 is not a valid port"#
    );
    assert_eq!(
        workload_error(|w| {
            w.services.insert("default/web".into(), ports(80, 65536));
        }),
        r#"workload.services["default/web"].ports[0].target_port: port 65536 exceeds 65535"#
    );
    let mut twice = ports(80, 1);
    twice.ports.push(wl::Port {
        service_port: 80,
        target_port: 2,
    });
    assert_eq!(
        workload_error(|w| {
            w.services.insert("default/web".into(), twice);
        }),
        r#"workload.services["default/web"].ports[1].service_port: service port 80 is listed twice"#
    );
}

#[test]
fn empty_identity_fields_get_the_same_defaults_as_local_files() {
    let w = convert_workload(valid_workload());
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.workload_type, "deployment");
    assert_eq!(w.protocol, InboundProtocol::Tcp);
    // The same entry in a local file reads exactly the same.
    let local = load_str(
        "workloads:\n- {uid: \"cluster1//v1/Pod/default/a\", name: a, namespace: default, workloadIps: [\"10.0.0.1\"]}\n",
        Path::new("m.yaml"),
        &defaults(),
    )
    .unwrap()
    .store;
    assert_eq!(*local.workload_by_uid(UID).unwrap(), w);
}

#[test]
fn fields_the_store_does_not_model_are_accepted() {
    let mut w = valid_workload();
    w.locality = Some(wl::Locality::default());
    w.capacity = Some(3);
    convert_workload(w);
    // An unknown IP family is ignored (read as AUTOMATIC), not a reason to drop the service.
    let mut s = valid_service();
    s.ip_families = 42;
    assert_eq!(convert_service(s).ip_families, None);
}

#[test]
fn service_ip_families_and_canonical_are_kept() {
    for (value, want) in [
        (wl::IpFamilies::Automatic, None),
        (wl::IpFamilies::Ipv4Only, Some(IpFamily::V4)),
        (wl::IpFamilies::Ipv6Only, Some(IpFamily::V6)),
        (wl::IpFamilies::Dual, Some(IpFamily::Dual)),
    ] {
        let mut s = valid_service();
        s.ip_families = value as i32;
        assert_eq!(convert_service(s).ip_families, want, "{value:?}");
    }
    let mut s = valid_service();
    s.canonical = true;
    assert!(convert_service(s).canonical);
    assert!(!convert_service(valid_service()).canonical);
}

fn vip(address: &[u8], length: Option<u32>) -> wl::NetworkAddress {
    wl::NetworkAddress {
        network: "n1".into(),
        address: address.to_vec(),
        length,
    }
}

#[test]
fn a_vip_with_a_prefix_length_is_a_cidr_range() {
    let mut s = valid_service();
    s.addresses = vec![
        vip(&[10, 96, 0, 1], None),
        // The full length is one address, like an absent length.
        vip(&[10, 96, 0, 2], Some(32)),
        // Host bits are cleared: ztunnel keys the range by its network address.
        vip(&[240, 0, 7, 9], Some(16)),
        vip(
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Some(64),
        ),
    ];
    let svc = convert_service(s);
    let exact: Vec<String> = svc.vips.iter().map(|v| v.address.to_string()).collect();
    assert_eq!(exact, ["10.96.0.1", "10.96.0.2"]);
    let ranges: Vec<String> = svc.cidr_vips.iter().map(|r| r.cidr.to_string()).collect();
    assert_eq!(ranges, ["240.0.0.0/16", "fd00::/64"]);
    assert!(svc.cidr_vips.iter().all(|r| r.network == "n1"));
}

#[test]
fn a_bad_vip_prefix_length_is_refused_with_the_reason() {
    let err = service_error(|s| s.addresses = vec![vip(&[10, 96, 0, 0], Some(33))]);
    assert!(err.starts_with("service.addresses[0]"), "{err}");
    assert!(err.contains("33"), "{err}");
    // A range covering loopback would capture the node's own traffic.
    let err = service_error(|s| s.addresses = vec![vip(&[127, 0, 0, 0], Some(8))]);
    assert!(err.starts_with("service.addresses[0]"), "{err}");
}

#[test]
fn service_key_must_match_the_resource_name() {
    assert_eq!(
        service_error(|s| s.hostname = "other.default.svc".into()),
        r#"service.hostname: namespace/hostname "default/other.default.svc" differs from the resource name"#
    );
    assert_eq!(
        service_error(|s| s.namespace.clear()),
        "service.namespace: must not be empty"
    );
    let err = service_error(|s| s.hostname = "web.default.svc/x".into());
    assert!(err.contains("contains '/'"), "{err}");
}

#[test]
fn service_addresses_and_ports_are_checked() {
    assert_eq!(
        service_error(|s| s.addresses = vec![wl::NetworkAddress {
            network: "n".into(),
            address: vec![1; 3],
            length: None,
        }]),
        "service.addresses[0].address: 3 bytes, expected 4 (IPv4) or 16 (IPv6)"
    );
    assert_eq!(
        service_error(|s| s.ports[0].service_port = 0),
        "service.ports[0].service_port: port 0 is not a valid port"
    );
    assert_eq!(
        service_error(|s| s.ports[0].service_port = 70000),
        "service.ports[0].service_port: port 70000 exceeds 65535"
    );
    // Target port 0 means "same as the service port" and is kept as such.
    let mut s = valid_service();
    s.ports[0].target_port = 0;
    assert_eq!(convert_service(s).ports, HashMap::from([(80, 0)]));
}

#[test]
fn policy_name_must_match_the_resource_name() {
    assert_eq!(
        policy_error(|p| p.name = "q".into()),
        r#"name: namespace/name "ns/q" differs from the resource name"#
    );
    assert_eq!(
        policy_error(|p| p.namespace.clear()),
        "namespace: must not be empty"
    );
    assert_eq!(policy_error(|p| p.name.clear()), "name: must not be empty");
}

#[test]
fn policy_string_matches_must_say_what_they_match() {
    assert_eq!(
        policy_error(|p| first_match(p)
            .not_principals
            .push(sec::StringMatch::default())),
        "rules[0].clauses[0].matches[0].not_principals[0].match_type: empty: none of exact, prefix, suffix, presence is set"
    );
}

#[test]
fn policy_ip_ranges_are_checked() {
    let range = |address: Vec<u8>, length| sec::Address { address, length };
    assert_eq!(
        policy_error(|p| first_match(p).source_ips.push(range(vec![10, 0, 0], 8))),
        "rules[0].clauses[0].matches[0].source_ips[0].address: 3 bytes, expected 4 (IPv4) or 16 (IPv6)"
    );
    assert_eq!(
        policy_error(|p| first_match(p)
            .not_destination_ips
            .push(range(vec![10, 0, 0, 0], 33))),
        "rules[0].clauses[0].matches[0].not_destination_ips[0].length: prefix length 33 exceeds 32 for 10.0.0.0"
    );
    assert_eq!(
        policy_error(|p| first_match(p)
            .destination_ips
            .push(range(vec![0; 16], 300))),
        "rules[0].clauses[0].matches[0].destination_ips[0].length: prefix length 300 exceeds 128 for ::"
    );
    let mut p = valid_policy();
    first_match(&mut p).source_ips.push(range(vec![0; 16], 128));
    let policy = authorization_from_proto("ns/p", p).unwrap();
    assert_eq!(
        policy.rules[0].clauses[0].matches[0].source_ips,
        ["::/128".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn policy_ports_are_checked() {
    assert_eq!(
        policy_error(|p| first_match(p).destination_ports = vec![80, 0]),
        "rules[0].clauses[0].matches[0].destination_ports[1]: port 0 is not a valid port"
    );
    assert_eq!(
        policy_error(|p| first_match(p).not_destination_ports = vec![65536]),
        "rules[0].clauses[0].matches[0].not_destination_ports[0]: port 65536 exceeds 65535"
    );
}

#[test]
fn workload_keeps_the_policies_that_select_it() {
    let mut w = valid_workload();
    w.authorization_policies = vec!["default/allow-client".into(), "other/deny".into()];
    assert_eq!(
        convert_workload(w).authorization_policies,
        ["default/allow-client", "other/deny"]
    );
}

#[test]
fn a_malformed_selected_policy_key_is_refused() {
    for key in ["no-slash", "/name", "ns/", "a/b/c"] {
        assert_eq!(
            workload_error(|w| w.authorization_policies = vec!["ns/ok".into(), key.into()]),
            format!("workload.authorization_policies[1]: {key:?} is not <namespace>/<name>")
        );
    }
}

#[test]
fn dry_run_is_kept_and_extensions_are_ignored() {
    let mut p = valid_policy();
    p.dry_run = true;
    p.extensions = vec![wl::Extension {
        name: "future".into(),
        config: None,
    }];
    first_match(&mut p).extensions = vec![wl::Extension::default()];
    let policy = authorization_from_proto("ns/p", p).unwrap();
    assert!(policy.dry_run);
    assert!(
        !authorization_from_proto("ns/p", valid_policy())
            .unwrap()
            .dry_run
    );
}

/// A workload address or a service VIP that names the host itself (loopback, unspecified; v4,
/// v6 and v4-mapped) is refused with the resource, the field and the address; the NACK text
/// is this error's.
#[test]
fn loopback_and_unspecified_workload_addresses_and_vips_are_refused() {
    let v6 = |ip: &str| ip.parse::<Ipv6Addr>().unwrap().octets().to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![127, 0, 0, 1], "127.0.0.1"),
        (vec![127, 9, 8, 7], "127.9.8.7"),
        (vec![0, 0, 0, 0], "0.0.0.0"),
        (v6("::1"), "::1"),
        (v6("::"), "::"),
        (v6("::ffff:127.0.0.1"), "::ffff:127.0.0.1"),
    ];
    for (bytes, shown) in cases {
        let mut w = valid_workload();
        w.addresses.push(bytes.clone());
        let err = address_from_proto(UID, workload_address(w), &defaults()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "resource \"{UID}\": workload.addresses[1]: {shown}: "
            )),
            "{text}"
        );
        assert!(text.contains("names the host itself"), "{text}");

        let err = service_error(|s| {
            s.addresses = vec![wl::NetworkAddress {
                network: String::new(),
                address: bytes.clone(),
                length: None,
            }]
        });
        assert!(
            err.starts_with(&format!("service.addresses[0].address: {shown}: ")),
            "{err}"
        );
    }
}

#[test]
fn locality_and_capacity_are_kept_and_capacity_defaults_to_one() {
    let mut w = valid_workload();
    w.locality = Some(wl::Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: "s1".into(),
    });
    w.capacity = Some(7);
    let got = convert_workload(w);
    assert_eq!(
        got.locality,
        Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: "s1".into()
        }
    );
    assert_eq!(got.capacity, 7);
    let mut w = valid_workload();
    w.capacity = Some(0);
    assert_eq!(convert_workload(w).capacity, 0);
    let got = convert_workload(valid_workload());
    assert_eq!((got.locality, got.capacity), (Locality::default(), 1));
}

#[test]
fn load_balancing_is_kept() {
    use wl::load_balancing::{HealthPolicy, Mode, Scope};
    let mut s = valid_service();
    s.load_balancing = Some(wl::LoadBalancing {
        routing_preference: vec![
            Scope::Network as i32,
            Scope::Region as i32,
            Scope::Zone as i32,
        ],
        mode: Mode::Failover as i32,
        health_policy: HealthPolicy::AllowAll as i32,
        ..Default::default()
    });
    assert_eq!(
        convert_service(s).load_balancing,
        Some(LoadBalancing {
            routing_preference: vec![LbScope::Network, LbScope::Region, LbScope::Zone],
            mode: LbMode::Failover,
            health_policy: LbHealthPolicy::AllowAll,
        })
    );
    assert_eq!(convert_service(valid_service()).load_balancing, None);
}

#[test]
fn unknown_load_balancing_enums_skip_the_service_without_a_nack() {
    type Change = fn(&mut wl::LoadBalancing);
    let cases: [(&str, Change); 4] = [
        ("service.load_balancing.routing_preference[1]", |lb| {
            lb.routing_preference = vec![1, 99]
        }),
        ("service.load_balancing.routing_preference[0]", |lb| {
            lb.routing_preference = vec![0]
        }),
        ("service.load_balancing.mode", |lb| lb.mode = 17),
        ("service.load_balancing.health_policy", |lb| {
            lb.health_policy = 5
        }),
    ];
    for (field, change) in cases {
        let mut lb = wl::LoadBalancing::default();
        change(&mut lb);
        let mut s = valid_service();
        s.load_balancing = Some(lb);
        match address_from_proto(SERVICE, service_address(s), &defaults()) {
            Err(ProtoError::Unsupported { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Unsupported, got {other:?}"),
        }
    }
}

fn waypoint_by_address(ip: Vec<u8>, port: u32) -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: "net1".into(),
                address: ip,
                length: None,
            },
        )),
        hbone_mtls_port: port,
    }
}

#[test]
fn waypoints_are_kept_by_address_and_by_hostname() {
    let mut w = valid_workload();
    w.waypoint = Some(waypoint_by_address(vec![10, 0, 0, 9], 15009));
    assert_eq!(
        convert_workload(w).waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress::new("net1", ip("10.0.0.9"))),
            hbone_mtls_port: 15009,
        })
    );
    let mut s = valid_service();
    s.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "infra".into(),
                hostname: "waypoint.infra.svc".into(),
            },
        )),
        // Unset: the standard HBONE port.
        hbone_mtls_port: 0,
    });
    assert_eq!(
        convert_service(s).waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname("infra/waypoint.infra.svc".parse().unwrap()),
            hbone_mtls_port: 15008,
        })
    );
}

#[test]
fn unreadable_waypoints_are_refused_naming_the_field() {
    assert_eq!(
        workload_error(|w| w.waypoint = Some(waypoint_by_address(vec![1, 2, 3], 15008))),
        "workload.waypoint.address.address: 3 bytes, expected 4 (IPv4) or 16 (IPv6)"
    );
    assert_eq!(
        workload_error(|w| w.waypoint = Some(waypoint_by_address(vec![10, 0, 0, 9], 70000))),
        "workload.waypoint.hbone_mtls_port: port 70000 exceeds 65535"
    );
    assert_eq!(
        service_error(|s| {
            s.waypoint = Some(wl::GatewayAddress {
                destination: None,
                hbone_mtls_port: 15008,
            })
        }),
        "service.waypoint.destination: empty: neither `hostname` nor `address` is set"
    );
    assert_eq!(
        service_error(|s| {
            s.waypoint = Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Hostname(
                    wl::NamespacedHostname {
                        namespace: String::new(),
                        hostname: "w".into(),
                    },
                )),
                hbone_mtls_port: 15008,
            })
        }),
        "service.waypoint.hostname.namespace: must not be empty"
    );
    assert_eq!(
        workload_error(|w| {
            let mut gw = waypoint_by_address(vec![10, 0, 0, 0], 15008);
            if let Some(wl::gateway_address::Destination::Address(a)) = &mut gw.destination {
                a.length = Some(24);
            }
            w.waypoint = Some(gw)
        }),
        "workload.waypoint.address.length: a waypoint address must be a single address, not a range"
    );
}

#[test]
fn network_gateways_are_kept_and_unreadable_ones_refused_naming_the_field() {
    let mut w = valid_workload();
    w.network_gateway = Some(waypoint_by_address(vec![10, 0, 0, 9], 15009));
    assert_eq!(
        convert_workload(w).network_gateway,
        Some(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress::new("net1", ip("10.0.0.9"))),
            hbone_mtls_port: 15009,
        })
    );
    assert_eq!(
        workload_error(|w| w.network_gateway = Some(waypoint_by_address(vec![1, 2, 3], 15008))),
        "workload.network_gateway.address.address: 3 bytes, expected 4 (IPv4) or 16 (IPv6)"
    );
}
