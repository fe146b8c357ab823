//! Wire-compatibility checks. Expected bytes are computed by hand from the field numbers
//! and types of Istio's and Envoy's public definitions: tag = (number << 3) | wire type,
//! varint encoded (wire type 0 = varint, 2 = length delimited).

use super::*;
use prost::{Message, Name};
use std::collections::HashMap;

fn enc<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A length-delimited field holding `payload` (payload < 128 bytes).
fn ld(tag: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 128);
    let mut v = tag.to_vec();
    v.push(payload.len() as u8);
    v.extend_from_slice(payload);
    v
}

mod workload {
    use super::*;
    use crate::istio::workload::*;

    #[test]
    fn workload_scalar_field_numbers() {
        // uid = 20 (string): tag (20<<3)|2 = 162 = 0xA2 0x01
        let w = Workload {
            uid: "u".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0xA2, 0x01], b"u"));

        // name = 1, namespace = 2
        let w = Workload {
            name: "n".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x0A], b"n"));
        let w = Workload {
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x12], b"ns"));

        // addresses = 3 (repeated bytes, never packed)
        let w = Workload {
            addresses: vec![vec![10, 0, 0, 1], vec![10, 0, 0, 2]],
            ..Default::default()
        };
        let mut want = ld(&[0x1A], &[10, 0, 0, 1]);
        want.extend(ld(&[0x1A], &[10, 0, 0, 2]));
        assert_eq!(enc(&w), want);

        // network = 4, trust_domain = 6, service_account = 7, node = 9
        let w = Workload {
            network: "x".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x22], b"x"));
        let w = Workload {
            trust_domain: "td".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x32], b"td"));
        let w = Workload {
            service_account: "sa".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x3A], b"sa"));
        let w = Workload {
            node: "nd".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x4A], b"nd"));

        // canonical_name = 10, canonical_revision = 11, workload_name = 13
        let w = Workload {
            canonical_name: "c".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x52], b"c"));
        let w = Workload {
            canonical_revision: "r".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x5A], b"r"));
        let w = Workload {
            workload_name: "wn".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x6A], b"wn"));

        // hostname = 21: (21<<3)|2 = 170 = 0xAA 0x01
        let w = Workload {
            hostname: "h".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0xAA, 0x01], b"h"));

        // authorization_policies = 16 (repeated string): 130 = 0x82 0x01
        let w = Workload {
            authorization_policies: vec!["p".into()],
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x82, 0x01], b"p"));

        // cluster_id = 18: 146 = 0x92 0x01
        let w = Workload {
            cluster_id: "k".into(),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0x92, 0x01], b"k"));
    }

    #[test]
    fn workload_enum_and_bool_field_numbers() {
        // tunnel_protocol = 5 (enum, varint): tag 0x28; HBONE = 1
        let w = Workload {
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0x28, 0x01]);

        // workload_type = 12: tag 0x60; POD = 2
        let w = Workload {
            workload_type: WorkloadType::Pod as i32,
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0x60, 0x02]);

        // native_tunnel = 14 (bool): tag 0x70
        let w = Workload {
            native_tunnel: true,
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0x70, 0x01]);

        // status = 17: (17<<3)|0 = 136 = 0x88 0x01; UNHEALTHY = 1
        let w = Workload {
            status: WorkloadStatus::Unhealthy as i32,
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0x88, 0x01, 0x01]);

        // network_mode = 25: 200 = 0xC8 0x01; HOST_NETWORK = 1
        let w = Workload {
            network_mode: NetworkMode::HostNetwork as i32,
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0xC8, 0x01, 0x01]);

        // Enum values.
        assert_eq!(WorkloadType::Deployment as i32, 0);
        assert_eq!(WorkloadType::Cronjob as i32, 1);
        assert_eq!(WorkloadType::Job as i32, 3);
        assert_eq!(IpFamilies::Automatic as i32, 0);
        assert_eq!(IpFamilies::Ipv4Only as i32, 1);
        assert_eq!(IpFamilies::Ipv6Only as i32, 2);
        assert_eq!(IpFamilies::Dual as i32, 3);
    }

    #[test]
    fn workload_message_field_numbers() {
        // waypoint = 8: tag 0x42, GatewayAddress.hbone_mtls_port = 3 (varint 0x18)
        let w = Workload {
            waypoint: Some(GatewayAddress {
                destination: None,
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        };
        // 15008 = 0x3AA0 -> varint A0 75
        assert_eq!(enc(&w), ld(&[0x42], &[0x18, 0xA0, 0x75]));

        // network_gateway = 19: 154 = 0x9A 0x01
        let w = Workload {
            network_gateway: Some(GatewayAddress::default()),
            ..Default::default()
        };
        assert_eq!(enc(&w), vec![0x9A, 0x01, 0x00]);

        // services = 22 (map<string, PortList>): 178 = 0xB2 0x01; entry key = 1, value = 2;
        // PortList.ports = 1; Port.service_port = 1, target_port = 2
        let mut services = HashMap::new();
        services.insert(
            "ns/h".to_string(),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: 8080,
                }],
            },
        );
        let w = Workload {
            services,
            ..Default::default()
        };
        // Port{80, 8080}: 08 50 10 90 3F
        let port = [0x08, 0x50, 0x10, 0x90, 0x3F];
        let port_list = ld(&[0x0A], &port);
        let mut entry = ld(&[0x0A], b"ns/h");
        entry.extend(ld(&[0x12], &port_list));
        assert_eq!(enc(&w), ld(&[0xB2, 0x01], &entry));

        // application_tunnel = 23: 186 = 0xBA 0x01; protocol = 1 (PROXY = 1), port = 2
        let w = Workload {
            application_tunnel: Some(ApplicationTunnel {
                protocol: application_tunnel::Protocol::Proxy as i32,
                port: 15088,
            }),
            ..Default::default()
        };
        // 15088 = 0x3AF0 -> varint F0 75
        assert_eq!(enc(&w), ld(&[0xBA, 0x01], &[0x08, 0x01, 0x10, 0xF0, 0x75]));

        // locality = 24: 194 = 0xC2 0x01; region = 1, zone = 2, subzone = 3
        let w = Workload {
            locality: Some(Locality {
                region: "r".into(),
                zone: "z".into(),
                subzone: "s".into(),
            }),
            ..Default::default()
        };
        let mut loc = ld(&[0x0A], b"r");
        loc.extend(ld(&[0x12], b"z"));
        loc.extend(ld(&[0x1A], b"s"));
        assert_eq!(enc(&w), ld(&[0xC2, 0x01], &loc));

        // extensions = 26: 210 = 0xD2 0x01; Extension.name = 1, config = 2 (Any)
        let w = Workload {
            extensions: vec![Extension {
                name: "e".into(),
                config: None,
            }],
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0xD2, 0x01], &ld(&[0x0A], b"e")));

        // capacity = 27 (google.protobuf.UInt32Value): 218 = 0xDA 0x01; value = 1
        let w = Workload {
            capacity: Some(5),
            ..Default::default()
        };
        assert_eq!(enc(&w), ld(&[0xDA, 0x01], &[0x08, 0x05]));
    }

    #[test]
    fn decode_hand_built_workload() {
        // As an istiod would send it, fields in arbitrary order.
        let mut buf = ld(&[0x0A], b"pod-a"); // name
        buf.extend(ld(&[0x12], b"default")); // namespace
        buf.extend(ld(&[0x1A], &[10, 244, 0, 7])); // addresses
        buf.extend(ld(&[0x3A], b"bookinfo")); // service_account
        buf.extend([0x28, 0x01]); // tunnel_protocol = HBONE
        buf.extend(ld(&[0xA2, 0x01], b"c1//Pod/default/pod-a")); // uid
        let w = Workload::decode(buf.as_slice()).unwrap();
        assert_eq!(w.uid, "c1//Pod/default/pod-a");
        assert_eq!(w.name, "pod-a");
        assert_eq!(w.namespace, "default");
        assert_eq!(w.addresses, vec![vec![10, 244, 0, 7]]);
        assert_eq!(w.service_account, "bookinfo");
        assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);

        // Wrapped in Address (workload = 1) it round trips too.
        let a = Address {
            r#type: Some(address::Type::Workload(w.clone())),
        };
        let bytes = enc(&a);
        assert_eq!(bytes[0], 0x0A);
        assert_eq!(Address::decode(bytes.as_slice()).unwrap(), a);
    }

    #[test]
    fn service_field_numbers() {
        // Address.service = 2
        let a = Address {
            r#type: Some(address::Type::Service(Service::default())),
        };
        assert_eq!(enc(&a), vec![0x12, 0x00]);

        // hostname = 3, addresses = 4 (NetworkAddress{network = 1, address = 2})
        let s = Service {
            hostname: "h".into(),
            addresses: vec![NetworkAddress {
                network: "".into(),
                address: vec![10, 96, 0, 1],
                length: None,
            }],
            ..Default::default()
        };
        let mut want = ld(&[0x1A], b"h");
        want.extend(ld(&[0x22], &ld(&[0x12], &[10, 96, 0, 1])));
        assert_eq!(enc(&s), want);

        // NetworkAddress.length = 3, optional: present even when 0, absent when unset
        let cidr = NetworkAddress {
            network: "".into(),
            address: vec![10, 96, 0, 0],
            length: Some(16),
        };
        let mut want = ld(&[0x12], &[10, 96, 0, 0]);
        want.extend([0x18, 16]);
        assert_eq!(enc(&cidr), want);
        let zero = NetworkAddress {
            length: Some(0),
            ..cidr
        };
        assert!(enc(&zero).ends_with(&[0x18, 0]));

        // ports = 5, subject_alt_names = 6
        let s = Service {
            ports: vec![Port {
                service_port: 1,
                target_port: 0,
            }],
            subject_alt_names: vec!["x".into()],
            ..Default::default()
        };
        let mut want = ld(&[0x2A], &[0x08, 0x01]);
        want.extend(ld(&[0x32], b"x"));
        assert_eq!(enc(&s), want);

        // waypoint = 7 with GatewayAddress.hostname = 1 (NamespacedHostname ns = 1, host = 2)
        let s = Service {
            waypoint: Some(GatewayAddress {
                destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: "n".into(),
                    hostname: "w".into(),
                })),
                hbone_mtls_port: 0,
            }),
            ..Default::default()
        };
        let mut nh = ld(&[0x0A], b"n");
        nh.extend(ld(&[0x12], b"w"));
        assert_eq!(enc(&s), ld(&[0x3A], &ld(&[0x0A], &nh)));

        // GatewayAddress.address = 2
        let g = GatewayAddress {
            destination: Some(gateway_address::Destination::Address(NetworkAddress {
                network: "".into(),
                address: vec![1, 2, 3, 4],
                length: None,
            })),
            hbone_mtls_port: 0,
        };
        assert_eq!(enc(&g), ld(&[0x12], &ld(&[0x12], &[1, 2, 3, 4])));

        // load_balancing = 8: routing_preference = 1 (packed enum), mode = 2,
        // health_policy = 3, dns_connect_strategy = 4
        let s = Service {
            load_balancing: Some(LoadBalancing {
                routing_preference: vec![
                    load_balancing::Scope::Network as i32,
                    load_balancing::Scope::Region as i32,
                    load_balancing::Scope::Zone as i32,
                ],
                mode: load_balancing::Mode::Failover as i32,
                health_policy: load_balancing::HealthPolicy::AllowAll as i32,
                dns_connect_strategy: load_balancing::DnsConnectStrategy::FirstHealthyRace as i32,
            }),
            ..Default::default()
        };
        let mut lb = ld(&[0x0A], &[6, 1, 2]);
        lb.extend([0x10, 0x02, 0x18, 0x01, 0x20, 0x01]);
        assert_eq!(enc(&s), ld(&[0x42], &lb));
        assert_eq!(load_balancing::Scope::Subzone as i32, 3);
        assert_eq!(load_balancing::Scope::Node as i32, 4);
        assert_eq!(load_balancing::Scope::Cluster as i32, 5);
        assert_eq!(load_balancing::Mode::Strict as i32, 1);
        assert_eq!(load_balancing::Mode::Passthrough as i32, 3);

        // ip_families = 9 (varint 0x48), extensions = 10 (0x52), canonical = 11 (0x58)
        let s = Service {
            ip_families: IpFamilies::Dual as i32,
            extensions: vec![Extension::default()],
            canonical: true,
            ..Default::default()
        };
        assert_eq!(enc(&s), vec![0x48, 0x03, 0x52, 0x00, 0x58, 0x01]);
    }
}

mod security {
    use super::*;
    use crate::istio::security::*;

    #[test]
    fn authorization_field_numbers() {
        let a = Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match::default()],
                }],
            }],
            dry_run: true,
            extensions: vec![crate::istio::workload::Extension {
                name: "x".into(),
                config: None,
            }],
        };
        // name = 1, namespace = 2, scope = 3, action = 4, rules = 5, dry_run = 6,
        // extensions = 7; Rule.clauses = 1; Clause.matches = 2
        let mut want = ld(&[0x0A], b"p");
        want.extend(ld(&[0x12], b"ns"));
        want.extend([0x18, 0x02, 0x20, 0x01]);
        let clause = ld(&[0x12], &[]);
        let rule = ld(&[0x0A], &clause);
        want.extend(ld(&[0x2A], &rule));
        want.extend([0x30, 0x01]);
        want.extend(ld(&[0x3A], &ld(&[0x0A], b"x")));
        assert_eq!(enc(&a), want);
        // Match.extensions = 13
        let m = Match {
            extensions: vec![crate::istio::workload::Extension::default()],
            ..Default::default()
        };
        assert_eq!(enc(&m), vec![0x6A, 0x00]);
        assert_eq!(Scope::Global as i32, 0);
        assert_eq!(Scope::Namespace as i32, 1);
        assert_eq!(Action::Allow as i32, 0);
    }

    #[test]
    fn match_field_numbers() {
        let exact = |s: &str| StringMatch {
            match_type: Some(string_match::MatchType::Exact(s.into())),
        };
        let cases: Vec<(Match, Vec<u8>)> = vec![
            (
                Match {
                    namespaces: vec![exact("a")],
                    ..Default::default()
                },
                ld(&[0x0A], &ld(&[0x0A], b"a")),
            ),
            (
                Match {
                    not_namespaces: vec![exact("a")],
                    ..Default::default()
                },
                ld(&[0x12], &ld(&[0x0A], b"a")),
            ),
            (
                Match {
                    principals: vec![exact("a")],
                    ..Default::default()
                },
                ld(&[0x1A], &ld(&[0x0A], b"a")),
            ),
            (
                Match {
                    not_principals: vec![exact("a")],
                    ..Default::default()
                },
                ld(&[0x22], &ld(&[0x0A], b"a")),
            ),
            (
                Match {
                    source_ips: vec![Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    ..Default::default()
                },
                ld(&[0x2A], &[0x0A, 0x04, 10, 0, 0, 0, 0x10, 0x08]),
            ),
            (
                Match {
                    not_source_ips: vec![Address::default()],
                    ..Default::default()
                },
                vec![0x32, 0x00],
            ),
            (
                Match {
                    destination_ips: vec![Address::default()],
                    ..Default::default()
                },
                vec![0x3A, 0x00],
            ),
            (
                Match {
                    not_destination_ips: vec![Address::default()],
                    ..Default::default()
                },
                vec![0x42, 0x00],
            ),
            (
                // repeated uint32 in proto3 is packed
                Match {
                    destination_ports: vec![80, 443],
                    ..Default::default()
                },
                ld(&[0x4A], &[0x50, 0xBB, 0x03]),
            ),
            (
                Match {
                    not_destination_ports: vec![22],
                    ..Default::default()
                },
                ld(&[0x52], &[22]),
            ),
            (
                // service_accounts = 11 (0x5A); ServiceAccountMatch namespace = 1, sa = 2
                Match {
                    service_accounts: vec![ServiceAccountMatch {
                        namespace: "n".into(),
                        service_account: "s".into(),
                    }],
                    ..Default::default()
                },
                ld(&[0x5A], &[0x0A, 0x01, b'n', 0x12, 0x01, b's']),
            ),
            (
                Match {
                    not_service_accounts: vec![ServiceAccountMatch::default()],
                    ..Default::default()
                },
                vec![0x62, 0x00],
            ),
        ];
        for (m, want) in cases {
            assert_eq!(enc(&m), want, "{m:?}");
        }
    }

    #[test]
    fn string_match_oneof_numbers() {
        use string_match::MatchType;
        let cases = [
            (MatchType::Exact("x".into()), vec![0x0A, 0x01, b'x']),
            (MatchType::Prefix("x".into()), vec![0x12, 0x01, b'x']),
            (MatchType::Suffix("x".into()), vec![0x1A, 0x01, b'x']),
            (MatchType::Presence(()), vec![0x22, 0x00]),
        ];
        for (mt, want) in cases {
            let m = StringMatch {
                match_type: Some(mt),
            };
            assert_eq!(enc(&m), want);
            assert_eq!(StringMatch::decode(want.as_slice()).unwrap(), m);
        }
    }
}

mod zds {
    use super::*;
    use crate::istio::zds::*;

    #[test]
    fn hello_v1() {
        let h = ZdsHello {
            version: Version::V1 as i32,
        };
        assert_eq!(enc(&h), vec![0x08, 0x01]);
        assert_eq!(Version::NotUsed as i32, 0);
    }

    #[test]
    fn workload_request_add_round_trip() {
        let req = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "u1".into(),
                workload_info: Some(WorkloadInfo {
                    name: "p".into(),
                    namespace: "n".into(),
                    service_account: "s".into(),
                    windows_namespace: None,
                }),
            })),
        };
        let bytes = enc(&req);
        // add = 1; AddWorkload uid = 1, workload_info = 2; WorkloadInfo name/ns/sa = 1/2/3
        let info = [0x0A, 0x01, b'p', 0x12, 0x01, b'n', 0x1A, 0x01, b's'];
        let mut add = ld(&[0x0A], b"u1");
        add.extend(ld(&[0x12], &info));
        assert_eq!(bytes, ld(&[0x0A], &add));
        assert_eq!(WorkloadRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn workload_request_other_payloads() {
        use workload_request::Payload;
        // keep = 5 (KeepWorkload uid = 1)
        let keep = WorkloadRequest {
            payload: Some(Payload::Keep(KeepWorkload { uid: "k".into() })),
        };
        assert_eq!(enc(&keep), ld(&[0x2A], &ld(&[0x0A], b"k")));
        // del = 2 (DelWorkload uid = 2!)
        let del = WorkloadRequest {
            payload: Some(Payload::Del(DelWorkload { uid: "d".into() })),
        };
        assert_eq!(enc(&del), ld(&[0x12], &ld(&[0x12], b"d")));
        // snapshot_sent = 3
        let snap = WorkloadRequest {
            payload: Some(Payload::SnapshotSent(SnapshotSent {})),
        };
        assert_eq!(enc(&snap), vec![0x1A, 0x00]);
        assert_eq!(
            WorkloadRequest::decode([0x1A, 0x00].as_slice()).unwrap(),
            snap
        );
        // WorkloadInfo.windows_namespace = 5; WindowsNamespace id = 1, guid = 2
        let info = WorkloadInfo {
            windows_namespace: Some(WindowsNamespace {
                id: 3,
                guid: "g".into(),
            }),
            ..Default::default()
        };
        assert_eq!(enc(&info), ld(&[0x2A], &[0x08, 0x03, 0x12, 0x01, b'g']));
    }

    #[test]
    fn workload_response_ack() {
        let resp = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: "bad".into(),
            })),
        };
        let bytes = enc(&resp);
        assert_eq!(bytes, ld(&[0x0A], &ld(&[0x0A], b"bad")));
        assert_eq!(WorkloadResponse::decode(bytes.as_slice()).unwrap(), resp);
        // An empty Ack (success) is still a present oneof member.
        let ok = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack::default())),
        };
        assert_eq!(enc(&ok), vec![0x0A, 0x00]);
    }
}

mod ca {
    use super::*;
    use crate::istio::auth::*;

    #[test]
    fn certificate_request_and_response() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    "spiffe://cluster.local/ns/a/sa/b".into(),
                )),
            },
        );
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 3600,
            metadata: Some(prost_types::Struct { fields }),
        };
        let bytes = enc(&req);
        // csr = 1, validity_duration = 3 (int64 varint; 3600 = 90 1C), metadata = 4
        assert_eq!(&bytes[..7], &[0x0A, 0x01, b'C', 0x18, 0x90, 0x1C, 0x22]);
        assert_eq!(
            IstioCertificateRequest::decode(bytes.as_slice()).unwrap(),
            req
        );

        // cert_chain = 1 (repeated string), root_cert = 2 (Roots.ca_cert = 1)
        let resp = IstioCertificateResponse {
            cert_chain: vec!["leaf".into(), "root".into()],
            root_cert: Some(Roots {
                ca_cert: vec!["r".into()],
            }),
        };
        let mut want = ld(&[0x0A], b"leaf");
        want.extend(ld(&[0x0A], b"root"));
        want.extend(ld(&[0x12], &ld(&[0x0A], b"r")));
        assert_eq!(enc(&resp), want);
    }

    #[test]
    fn grpc_service_name() {
        assert_eq!(
            istio_certificate_service_server::SERVICE_NAME,
            "istio.v1.auth.IstioCertificateService"
        );
        // The client type exists for a tonic transport channel.
        fn _client_type(
            _: istio_certificate_service_client::IstioCertificateServiceClient<
                tonic::transport::Channel,
            >,
        ) {
        }
    }
}

mod xds {
    use super::*;
    use crate::envoy::config::core::v3::{node, ControlPlane, Node};
    use crate::envoy::service::discovery::v3::*;
    use crate::google::rpc::Status;

    #[test]
    fn delta_request_field_numbers() {
        // node = 1 (Node.id = 1)
        let r = DeltaDiscoveryRequest {
            node: Some(Node {
                id: "i".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(enc(&r), ld(&[0x0A], &ld(&[0x0A], b"i")));

        let r = DeltaDiscoveryRequest {
            type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec!["a".into()],
            resource_names_unsubscribe: vec!["b".into()],
            response_nonce: "n".into(),
            ..Default::default()
        };
        // type_url = 2, subscribe = 3, unsubscribe = 4, response_nonce = 6
        let mut want = ld(&[0x12], WORKLOAD_ADDRESS_TYPE_URL.as_bytes());
        want.extend(ld(&[0x1A], b"a"));
        want.extend(ld(&[0x22], b"b"));
        want.extend(ld(&[0x32], b"n"));
        assert_eq!(enc(&r), want);

        // initial_resource_versions = 5 (map<string,string>)
        let mut irv = HashMap::new();
        irv.insert("k".to_string(), "v".to_string());
        let r = DeltaDiscoveryRequest {
            initial_resource_versions: irv,
            ..Default::default()
        };
        assert_eq!(enc(&r), ld(&[0x2A], &[0x0A, 0x01, b'k', 0x12, 0x01, b'v']));

        // error_detail = 7 (google.rpc.Status code = 1, message = 2)
        let r = DeltaDiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "m".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(enc(&r), ld(&[0x3A], &[0x08, 0x03, 0x12, 0x01, b'm']));

        // resource_locators_subscribe = 8, resource_locators_unsubscribe = 9
        let r = DeltaDiscoveryRequest {
            resource_locators_subscribe: vec![ResourceLocator {
                name: "x".into(),
                dynamic_parameters: HashMap::new(),
            }],
            resource_locators_unsubscribe: vec![ResourceLocator::default()],
            ..Default::default()
        };
        let mut want = ld(&[0x42], &ld(&[0x0A], b"x"));
        want.extend([0x4A, 0x00]);
        assert_eq!(enc(&r), want);

        // Status.details = 3 (repeated Any)
        let s = Status {
            code: 0,
            message: String::new(),
            details: vec![prost_types::Any::default()],
        };
        assert_eq!(enc(&s), vec![0x1A, 0x00]);
    }

    #[test]
    fn node_field_numbers() {
        let n = Node {
            id: "i".into(),
            cluster: "c".into(),
            metadata: Some(prost_types::Struct::default()),
            locality: Some(Default::default()),
            user_agent_name: "u".into(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion("v".into())),
            extensions: vec![],
            client_features: vec!["f".into()],
        };
        let mut want = ld(&[0x0A], b"i");
        want.extend(ld(&[0x12], b"c"));
        want.extend([0x1A, 0x00, 0x22, 0x00]);
        want.extend(ld(&[0x32], b"u"));
        want.extend(ld(&[0x3A], b"v"));
        want.extend(ld(&[0x52], b"f"));
        assert_eq!(enc(&n), want);
    }

    #[test]
    fn delta_response_field_numbers() {
        let any = prost_types::Any {
            type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
            value: vec![],
        };
        let resp = DeltaDiscoveryResponse {
            system_version_info: "s".into(),
            resources: vec![Resource {
                version: "1".into(),
                resource: Some(any),
                name: "r".into(),
                aliases: vec!["al".into()],
                ttl: Some(prost_types::Duration::default()),
                ..Default::default()
            }],
            type_url: "t".into(),
            removed_resources: vec!["x".into()],
            nonce: "n".into(),
            control_plane: Some(ControlPlane {
                identifier: "cp".into(),
            }),
            removed_resource_names: vec![ResourceName::default()],
        };
        let bytes = enc(&resp);
        let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, resp);

        // Check each top-level field number in isolation.
        let one = |r: DeltaDiscoveryResponse| enc(&r);
        assert_eq!(
            one(DeltaDiscoveryResponse {
                system_version_info: "s".into(),
                ..Default::default()
            }),
            ld(&[0x0A], b"s")
        );
        assert_eq!(
            one(DeltaDiscoveryResponse {
                type_url: "t".into(),
                ..Default::default()
            }),
            ld(&[0x22], b"t")
        );
        assert_eq!(
            one(DeltaDiscoveryResponse {
                nonce: "n".into(),
                ..Default::default()
            }),
            ld(&[0x2A], b"n")
        );
        assert_eq!(
            one(DeltaDiscoveryResponse {
                removed_resources: vec!["x".into()],
                ..Default::default()
            }),
            ld(&[0x32], b"x")
        );
        assert_eq!(
            one(DeltaDiscoveryResponse {
                control_plane: Some(ControlPlane::default()),
                ..Default::default()
            }),
            vec![0x3A, 0x00]
        );
        assert_eq!(
            one(DeltaDiscoveryResponse {
                removed_resource_names: vec![ResourceName::default()],
                ..Default::default()
            }),
            vec![0x42, 0x00]
        );

        // Resource: version = 1, resource = 2, name = 3, aliases = 4, ttl = 6,
        // cache_control = 7, resource_name = 8, metadata = 9
        let r = Resource {
            version: "1".into(),
            name: "r".into(),
            aliases: vec!["a".into()],
            ttl: Some(prost_types::Duration::default()),
            cache_control: Some(resource::CacheControl { do_not_cache: true }),
            ..Default::default()
        };
        let mut want = ld(&[0x0A], b"1");
        want.extend(ld(&[0x1A], b"r"));
        want.extend(ld(&[0x22], b"a"));
        want.extend([0x32, 0x00]);
        want.extend(ld(&[0x3A], &[0x08, 0x01]));
        // prost writes fields in ascending field-number order.
        assert_eq!(enc(&r), want);
        assert_eq!(Resource::decode(want.as_slice()).unwrap(), r);
        assert_eq!(
            enc(&Resource {
                resource: Some(prost_types::Any::default()),
                ..Default::default()
            }),
            vec![0x12, 0x00]
        );
        assert_eq!(
            enc(&Resource {
                resource_name: Some(ResourceName::default()),
                ..Default::default()
            }),
            vec![0x42, 0x00]
        );
        assert_eq!(
            enc(&Resource {
                metadata: Some(Default::default()),
                ..Default::default()
            }),
            vec![0x4A, 0x00]
        );
    }

    #[test]
    fn sotw_messages_and_service() {
        // DiscoveryRequest: version_info = 1, node = 2, resource_names = 3, type_url = 4,
        // response_nonce = 5, error_detail = 6, resource_locators = 7
        let r = DiscoveryRequest {
            version_info: "v".into(),
            node: Some(Node::default()),
            resource_names: vec!["a".into()],
            type_url: "t".into(),
            response_nonce: "n".into(),
            error_detail: Some(Status::default()),
            resource_locators: vec![ResourceLocator::default()],
        };
        let mut want = ld(&[0x0A], b"v");
        want.extend([0x12, 0x00]);
        want.extend(ld(&[0x1A], b"a"));
        want.extend(ld(&[0x22], b"t"));
        want.extend(ld(&[0x2A], b"n"));
        want.extend([0x32, 0x00, 0x3A, 0x00]);
        assert_eq!(enc(&r), want);
        assert_eq!(DiscoveryRequest::decode(want.as_slice()).unwrap(), r);

        // DiscoveryResponse: version_info = 1, resources = 2, canary = 3, type_url = 4,
        // nonce = 5, control_plane = 6
        let resp = DiscoveryResponse {
            version_info: "v".into(),
            resources: vec![prost_types::Any::default()],
            canary: true,
            type_url: "t".into(),
            nonce: "n".into(),
            control_plane: Some(ControlPlane::default()),
        };
        let mut want = ld(&[0x0A], b"v");
        want.extend([0x12, 0x00, 0x18, 0x01]);
        want.extend(ld(&[0x22], b"t"));
        want.extend(ld(&[0x2A], b"n"));
        want.extend([0x32, 0x00]);
        assert_eq!(enc(&resp), want);

        assert_eq!(
            aggregated_discovery_service_server::SERVICE_NAME,
            "envoy.service.discovery.v3.AggregatedDiscoveryService"
        );
        fn _client_type(
            _: aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<
                tonic::transport::Channel,
            >,
        ) {
        }
    }

    #[test]
    fn dynamic_parameter_constraints_recursion() {
        use dynamic_parameter_constraints::{single_constraint, SingleConstraint, Type};
        let c = DynamicParameterConstraints {
            r#type: Some(Type::NotConstraints(Box::new(
                DynamicParameterConstraints {
                    r#type: Some(Type::Constraint(SingleConstraint {
                        key: "k".into(),
                        constraint_type: Some(single_constraint::ConstraintType::Exists(
                            single_constraint::Exists {},
                        )),
                    })),
                },
            ))),
        };
        // not_constraints = 4 -> constraint = 1 -> key = 1, exists = 3
        let inner = [0x0A, 0x01, b'k', 0x1A, 0x00];
        let want = ld(&[0x22], &ld(&[0x0A], &inner));
        assert_eq!(enc(&c), want);
    }
}

#[test]
fn type_urls() {
    assert_eq!(
        crate::istio::workload::Address::type_url(),
        WORKLOAD_ADDRESS_TYPE_URL
    );
    assert_eq!(
        crate::istio::security::Authorization::type_url(),
        AUTHORIZATION_TYPE_URL
    );
    // Packing into Any uses the same URL.
    let any = prost_types::Any::from_msg(&crate::istio::workload::Address::default()).unwrap();
    assert_eq!(any.type_url, WORKLOAD_ADDRESS_TYPE_URL);
}

#[test]
fn file_descriptor_set_is_complete() {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let packages: std::collections::BTreeSet<&str> = fds.file.iter().map(|f| f.package()).collect();
    for p in [
        "istio.workload",
        "istio.security",
        "istio.v1.auth",
        "istio.workload.zds",
        "envoy.service.discovery.v3",
        "envoy.config.core.v3",
        "google.rpc",
        "google.protobuf",
    ] {
        assert!(packages.contains(p), "missing package {p}");
    }
    let workload_file = fds
        .file
        .iter()
        .find(|f| f.package() == "istio.workload")
        .unwrap();
    let workload = workload_file
        .message_type
        .iter()
        .find(|m| m.name() == "Workload")
        .unwrap();
    let uid = workload.field.iter().find(|f| f.name() == "uid").unwrap();
    assert_eq!(uid.number(), 20);
    // Reserved numbers are kept.
    assert!(workload
        .reserved_range
        .iter()
        .any(|r| r.start() == 15 && r.end() == 16));
}
