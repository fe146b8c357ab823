use super::*;
use crate::state::fixtures::RICH_MESH;
use crate::state::types::{
    Policy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, ServiceAccountMatch,
    StringMatch,
};

const GOOD: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  workloadIps: ["10.77.1.10"]
  protocol: HBONE
  node: n1
  canonicalName: client
  clusterId: cluster1
  services: {}
- name: server
  namespace: default
  workloadIps: ["10.77.2.10", "fd00::10"]
  protocol: HBONE
  trustDomain: example.org
  node: n2
  network: ""
  services:
    "default/server.default.svc.cluster.local":
      80: 9090
services:
- name: server
  namespace: default
  hostname: server.default.svc.cluster.local
  vips: ["/10.96.0.10", "net1/10.96.0.11"]
  ports:
    80: 8080
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/server"]
"#;

fn load(text: &str) -> Result<Loaded, LoadError> {
    load_str(text, Path::new("mesh.yaml"), &Defaults::default())
}

#[test]
fn loads_ztunnel_shaped_yaml_into_the_store() {
    let loaded = load(GOOD).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let store = loaded.store;
    let client = store
        .workload_by_ip("", "10.77.1.10".parse().unwrap())
        .unwrap();
    assert_eq!(
        client.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(client.protocol, InboundProtocol::Hbone);
    assert_eq!(client.node, "n1");
    assert_eq!(client.cluster_id, "cluster1");
    // Defaults as istiod fills them: uid, service account, trust domain.
    let server = store
        .workload_by_ip("", "fd00::10".parse().unwrap())
        .unwrap();
    assert_eq!(server.uid, "Kubernetes//v1/Pod/default/server");
    assert_eq!(server.service_account, "default");
    assert_eq!(server.trust_domain, "example.org");
    let svc = store
        .service_by_vip("net1", "10.96.0.11".parse().unwrap(), None)
        .unwrap();
    assert_eq!(svc.ports[&80], 8080);
    let up = store
        .resolve("", None, None, "10.96.0.10:80".parse().unwrap(), |_| 0)
        .unwrap()
        .ready();
    assert_eq!(up.target(), "10.77.2.10:9090".parse().unwrap());
}

#[test]
fn syntax_errors_name_file_line_and_field() {
    let text = "workloads:\n- name: a\n  namespace: default\n  protocol: HBONEX\n";
    let err = load(text).unwrap_err();
    let LoadError::Syntax { line, message, .. } = &err else {
        panic!("expected a located error, got {err}");
    };
    assert_eq!(*line, 4);
    assert!(message.contains("protocol"), "{message}");
    assert!(err.to_string().starts_with("mesh.yaml:4:"), "{err}");

    let text = "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.300\"]\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { line: 4, .. }), "{err}");
    assert!(err.to_string().contains("workloadIps"), "{err}");

    let text = "services:\n- name: s\n  namespace: d\n  hostname: h\n  vips: [\"net/not-an-ip\"]\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { line: 5, .. }), "{err}");
    assert!(err.to_string().contains("not-an-ip"), "{err}");

    let text =
        "workloads:\n- name: a\n  namespace: default\n  services:\n    nohostname: {80: 8080}\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { line: 5, .. }), "{err}");
}

#[test]
fn unknown_fields_are_errors_like_ztunnel() {
    let text = "workloads:\n- name: a\n  namespace: default\n  workloadIP: 10.0.0.1\n";
    let err = load(text).unwrap_err();
    assert!(matches!(err, LoadError::Syntax { line: 4, .. }), "{err}");
    assert!(err.to_string().contains("workloadIP"), "{err}");
}

#[test]
fn fields_not_modeled_yet_are_warned_about_by_name() {
    let text = r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  nativeTunnel: true
  authorizationPolicies: ["default/deny", "default/typo"]
policies:
- {name: deny, namespace: default, scope: WorkloadSelector, action: Deny}
"#;
    let loaded = load(text).unwrap();
    let all = loaded.warnings.join("\n");
    assert!(all.contains("`nativeTunnel`"), "{all}");
    // Selected policies are modeled now: no warning for the field, but one for the key the
    // file does not define.
    assert!(!all.contains("`authorizationPolicies`"), "{all}");
    assert!(
        all.contains("workload Kubernetes//v1/Pod/default/a names policy default/typo, which the file does not define"),
        "{all}"
    );
    assert!(!all.contains("default/deny,"), "{all}");
    assert!(loaded.store.policy("default/deny").is_some());
}

#[test]
fn a_malformed_selected_policy_key_names_the_workload() {
    let text = "workloads:\n- {name: a, namespace: d, authorizationPolicies: [\"no-slash\"]}\n";
    let err = load(text).unwrap_err().to_string();
    assert!(
        err.contains(
            "workloads[0] (a): `authorizationPolicies`: \"no-slash\" is not <namespace>/<name>"
        ),
        "{err}"
    );
}

#[test]
fn semantic_errors_name_the_entry() {
    // Two workloads on one address is what istiod sends for host-network pods: both kept.
    let shared_ip = "workloads:\n- {name: a, namespace: d, workloadIps: [\"10.0.0.1\"]}\n- {name: b, namespace: d, workloadIps: [\"10.0.0.1\"]}\n";
    let loaded = load(shared_ip).unwrap();
    assert_eq!(
        loaded
            .store
            .workloads_at("", "10.0.0.1".parse().unwrap())
            .len(),
        2
    );

    let dup_uid = "workloads:\n- {uid: x, namespace: d}\n- {uid: x, namespace: d}\n";
    assert!(load(dup_uid)
        .unwrap_err()
        .to_string()
        .contains("used twice"));

    let no_ns = "workloads:\n- {name: a, namespace: \"\"}\n";
    assert!(load(no_ns).unwrap_err().to_string().contains("`namespace`"));
}

/// A workload address or VIP naming the host itself is refused at load, naming the entry, the
/// field and the address; nothing of the file is applied.
#[test]
fn loopback_and_unspecified_addresses_are_refused() {
    for bad in [
        "127.0.0.1",
        "127.3.2.1",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:127.0.0.1",
    ] {
        let workload = format!(
            "workloads:\n- {{name: ok, namespace: d, workloadIps: [\"10.0.0.1\"]}}\n\
             - {{name: evil, namespace: d, workloadIps: [\"10.0.0.2\", \"{bad}\"]}}\n"
        );
        let err = load(&workload).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "mesh.yaml: workloads[1] (evil): `workloadIps[1]` {bad}: "
            )),
            "{err}"
        );
        assert!(err.contains("names the host itself"), "{err}");

        let service = format!(
            "services:\n- {{name: s, namespace: d, hostname: s.d.svc, vips: [\"/10.96.0.1\", \"net1/{bad}\"]}}\n"
        );
        let err = load(&service).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "mesh.yaml: services[0] (s.d.svc): `vips[1]` {bad}: "
            )),
            "{err}"
        );
    }
}

#[test]
fn empty_file_is_an_empty_mesh() {
    let loaded = load("").unwrap();
    assert_eq!(loaded.store.workloads().count(), 0);
}

#[test]
fn unreadable_file_names_the_path() {
    let err = load_file(Path::new("/nonexistent/mesh.yaml"), &Defaults::default()).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("cannot read /nonexistent/mesh.yaml"));
}

fn policy_yaml(body: &str) -> String {
    format!("policies:\n- name: p\n  namespace: ns\n{body}")
}

#[test]
fn loads_policies_in_ztunnel_shape() {
    let loaded = load(RICH_MESH).unwrap();
    let store = loaded.store;
    assert_eq!(store.policies().len(), 3);
    let exact = |s: &str| StringMatch::Exact(s.into());
    let net = |s: &str| s.parse().unwrap();
    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    };
    let expected = Policy {
        name: "allow-sleep".into(),
        namespace: "default".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules: vec![
            PolicyRule {
                clauses: vec![
                    PolicyClause {
                        matches: vec![
                            PolicyMatch {
                                principals: vec![
                                    exact("cluster.local/ns/default/sa/sleep"),
                                    StringMatch::Prefix("cluster.local/ns/ops/".into()),
                                ],
                                not_principals: vec![StringMatch::Suffix("/sa/untrusted".into())],
                                namespaces: vec![exact("default")],
                                not_namespaces: vec![StringMatch::Presence],
                                ..Default::default()
                            },
                            PolicyMatch {
                                service_accounts: vec![sa("default", "sleep")],
                                not_service_accounts: vec![sa("default", "bad")],
                                ..Default::default()
                            },
                        ],
                    },
                    PolicyClause {
                        matches: vec![PolicyMatch {
                            destination_ports: vec![80, 443],
                            not_destination_ports: vec![8080],
                            destination_ips: vec![net("10.77.2.0/24"), net("fd00::/64")],
                            not_destination_ips: vec![net("10.77.2.99/32")],
                            ..Default::default()
                        }],
                    },
                ],
            },
            PolicyRule {
                clauses: vec![PolicyClause {
                    matches: vec![PolicyMatch {
                        source_ips: vec![net("10.0.0.0/8")],
                        not_source_ips: vec![net("10.1.0.0/16")],
                        ..Default::default()
                    }],
                }],
            },
        ],
        dry_run: false,
    };
    assert_eq!(*store.policy("default/allow-sleep").unwrap(), expected);
    let deny = store.policy("istio-system/deny-all").unwrap();
    assert_eq!(
        (deny.scope, deny.action, deny.rules.len()),
        (PolicyScope::Global, PolicyAction::Deny, 0)
    );
    let selected = store.policy("default/selected").unwrap();
    assert_eq!(selected.scope, PolicyScope::WorkloadSelector);
    assert_eq!(selected.rules, vec![PolicyRule::default()]);
    assert!(selected.dry_run);
    let server = store
        .workloads()
        .find(|w| w.name == "server")
        .expect("the server workload");
    assert_eq!(server.authorization_policies, ["default/selected"]);
}

#[test]
fn policies_accept_proto_spellings_and_bare_ips() {
    let text = policy_yaml(
        "  scope: WORKLOAD_SELECTOR\n  action: DENY\n  rules: [[[{principals: [{exact: a}, {presence: {}}, {Presence: }, !Suffix b, !Presence []], sourceIps: [\"10.0.0.1\", \"fd00::1\"]}]]]\n",
    );
    let store = load(&text).unwrap().store;
    let p = store.policy("ns/p").unwrap();
    assert_eq!(p.scope, PolicyScope::WorkloadSelector);
    assert_eq!(p.action, PolicyAction::Deny);
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals,
        [
            StringMatch::Exact("a".into()),
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Suffix("b".into()),
            StringMatch::Presence,
        ]
    );
    assert_eq!(
        m.source_ips,
        [
            "10.0.0.1/32".parse().unwrap(),
            "fd00::1/128".parse().unwrap()
        ]
    );
}

#[test]
fn policy_syntax_errors_name_line_and_field() {
    let cases = [
        // Unknown field inside a match, as ztunnel would refuse it.
        ("  scope: Global\n  action: Allow\n  rules:\n  - - - sourceIp: [\"10.0.0.0/8\"]\n", 7, "sourceIp"),
        ("  scope: Everywhere\n  action: Allow\n", 4, "Everywhere"),
        ("  action: Allow\n", 2, "scope"),
        ("  scope: Global\n  action: Allow\n  rules: [[[{sourceIps: [\"10.0.0.0/33\"]}]]]\n", 6, "10.0.0.0/33"),
        ("  scope: Global\n  action: Allow\n  rules: [[[{principals: [{Regex: a}]}]]]\n", 6, "Regex"),
        ("  scope: Global\n  action: Allow\n  rules: [[[{principals: [{Presence: [x]}]}]]]\n", 6, "empty value"),
        ("  scope: Global\n  action: Allow\n  rules: [[[{destinationPorts: [70000]}]]]\n", 6, "70000"),
        ("  scope: Global\n  action: Allow\n  rules: [[[{serviceAccounts: [{namespace: a}]}]]]\n", 6, "serviceAccount"),
    ];
    for (body, line, needle) in cases {
        let err = load(&policy_yaml(body)).unwrap_err();
        let LoadError::Syntax { line: got, .. } = &err else {
            panic!("{body}: expected a located error, got {err}");
        };
        assert_eq!(*got, line, "{body}: {err}");
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
}

#[test]
fn policy_semantic_errors_name_the_entry() {
    let cases = [(
        "  scope: Global\n  action: Allow\n  rules: [[[{}], [{notDestinationPorts: [0]}]]]\n",
        "rules[0][1][0].notDestinationPorts: port 0",
    )];
    for (body, needle) in cases {
        let err = load(&policy_yaml(body)).unwrap_err();
        assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("policies[0] (ns/p)"), "{text}");
        assert!(text.contains(needle), "{text}");
    }
    let twice = "policies:\n- {name: a, namespace: n, scope: Global, action: Allow}\n- {name: a, namespace: n, scope: Global, action: Deny}\n";
    let err = load(twice).unwrap_err().to_string();
    assert!(
        err.contains("policies[1] (n/a): policy n/a is defined twice"),
        "{err}"
    );
    let no_name = "policies:\n- {name: \"\", namespace: n, scope: Global, action: Allow}\n";
    let err = load(no_name).unwrap_err().to_string();
    assert!(err.contains("`name` must not be empty"), "{err}");
    let slash = "policies:\n- {name: a, namespace: n/x, scope: Global, action: Allow}\n";
    let err = load(slash).unwrap_err().to_string();
    assert!(err.contains("contains '/'"), "{err}");
    let dry = policy_yaml("  scope: Global\n  action: Allow\n  dryRun: true\n");
    assert!(load(&dry).unwrap().store.policy("ns/p").unwrap().dry_run);
}

#[test]
fn workload_type_is_checked_and_defaults_like_the_proto() {
    let text =
        "workloads:\n- {name: a, namespace: d, workloadType: CronJob}\n- {name: b, namespace: d}\n";
    let store = load(text).unwrap().store;
    let a = store.workload_by_uid("Kubernetes//v1/Pod/d/a").unwrap();
    assert_eq!(a.workload_type, "cronjob");
    let b = store.workload_by_uid("Kubernetes//v1/Pod/d/b").unwrap();
    assert_eq!(b.workload_type, "deployment");
    let bad = "workloads:\n- {name: a, namespace: d, workloadType: statefulset}\n";
    let err = load(bad).unwrap_err().to_string();
    assert!(
        err.contains("workloads[0] (a): `workloadType` \"statefulset\""),
        "{err}"
    );
}

#[test]
fn service_ports_must_be_real_ports() {
    let w = "workloads:\n- name: a\n  namespace: d\n  services: {\"d/h\": {0: 80}}\n";
    let err = load(w).unwrap_err().to_string();
    assert!(
        err.contains("workloads[0] (a): `services` d/h has service port 0"),
        "{err}"
    );
    let s = "services:\n- {name: s, namespace: d, hostname: h, ports: {0: 80}}\n";
    let err = load(s).unwrap_err().to_string();
    assert!(
        err.contains("services[0] (h): `ports` has service port 0"),
        "{err}"
    );
    let slash = "services:\n- {name: s, namespace: d, hostname: a/b}\n";
    let err = load(slash).unwrap_err().to_string();
    assert!(err.contains("contains '/'"), "{err}");
}

#[test]
fn locality_capacity_and_load_balancer_in_ztunnel_shape() {
    let text = r#"
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  locality: {region: r1, zone: z1, subzone: s1}
  capacity: 0
- name: b
  namespace: default
  workloadIps: ["10.0.0.2"]
services:
- name: web
  namespace: default
  hostname: web.default.svc
  vips: ["/10.96.0.1"]
  ports: {80: 8080}
  loadBalancer:
    routingPreferences: [Network, Region, Zone, Subzone, Node, Cluster]
    mode: Strict
    healthPolicy: AllowAll
- name: plain
  namespace: default
  hostname: plain.default.svc
  vips: ["/10.96.0.2"]
  loadBalancer: {mode: Failover}
"#;
    let loaded = load(text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let store = loaded.store;
    let a = store
        .workload_by_ip("", "10.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(
        a.locality,
        Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: "s1".into()
        }
    );
    assert_eq!(a.capacity, 0);
    let b = store
        .workload_by_ip("", "10.0.0.2".parse().unwrap())
        .unwrap();
    assert_eq!((b.locality.clone(), b.capacity), (Locality::default(), 1));
    let web = store
        .service_by_vip("", "10.96.0.1".parse().unwrap(), None)
        .unwrap();
    use LbScope::*;
    assert_eq!(
        web.load_balancing,
        Some(LoadBalancing {
            routing_preference: vec![Network, Region, Zone, Subzone, Node, Cluster],
            mode: LbMode::Strict,
            health_policy: LbHealthPolicy::AllowAll,
        })
    );
    let plain = store
        .service_by_vip("", "10.96.0.2".parse().unwrap(), None)
        .unwrap();
    assert_eq!(
        plain.load_balancing,
        Some(LoadBalancing {
            routing_preference: vec![],
            mode: LbMode::Failover,
            health_policy: LbHealthPolicy::OnlyHealthy,
        })
    );
}

#[test]
fn an_unknown_load_balancer_mode_is_an_error_naming_line_and_field() {
    let text = r#"
services:
- name: web
  namespace: default
  hostname: web.default.svc
  loadBalancer: {mode: Sometimes}
"#;
    let err = load(text).unwrap_err().to_string();
    assert!(
        err.starts_with("mesh.yaml:6:")
            && err.contains("loadBalancer.mode: unknown variant `Sometimes`"),
        "{err}"
    );
}

#[test]
fn loads_hostname_endpoints_cidr_vips_ip_families_and_canonical() {
    let text = r#"
workloads:
- name: api-endpoint
  namespace: ext
  hostname: api.example.com
  protocol: TCP
  services:
    "ext/api.example.com":
      443: 443
services:
- name: api
  namespace: ext
  hostname: api.example.com
  cidrVips: [{network: "", cidr: 240.10.7.9/16}]
  ipFamilies: IPv4
  canonical: true
  ports:
    443: 443
"#;
    let loaded = load(text).unwrap();
    // A workload with a hostname but no address is reachable: no warning.
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let store = loaded.store;
    let svc = store
        .service_by_vip("", "240.10.200.1".parse().unwrap(), None)
        .unwrap();
    assert_eq!(svc.cidr_vips[0].cidr.to_string(), "240.10.0.0/16");
    assert_eq!(svc.ip_families, Some(IpFamily::V4));
    assert!(svc.canonical);
    let resolution = store
        .resolve("", None, None, "240.10.200.1:443".parse().unwrap(), |_| 0)
        .unwrap();
    assert!(
        matches!(&resolution, crate::state::Resolution::Lookup(h) if h.hostname() == "api.example.com"),
        "{resolution:?}"
    );

    // Without a hostname either, the workload is unreachable: warned about.
    let no_way = text.replace("  hostname: api.example.com\n  protocol", "  protocol");
    let loaded = load(&no_way).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("no `workloadIps` and no `hostname`")),
        "{:?}",
        loaded.warnings
    );
    // A range over loopback is refused, naming it.
    let err = load(&text.replace("240.10.7.9/16", "127.0.0.0/8")).unwrap_err();
    assert!(
        err.to_string().contains("`cidrVips[0]` 127.0.0.0/8"),
        "{err}"
    );
    let err = load(&text.replace("IPv4", "IPv5")).unwrap_err();
    assert!(err.to_string().contains("IPv5"), "{err}");
}

#[test]
fn waypoints_in_ztunnel_shape_by_address_and_hostname() {
    let text = r#"
services:
- name: web
  namespace: default
  hostname: web.default.svc
  vips: ["/10.10.0.1"]
  ports: {80: 8080}
  waypoint: {destination: "infra/waypoint.infra.svc", hboneMtlsPort: 15009}
workloads:
- name: a
  namespace: default
  workloadIps: ["10.0.0.1"]
  waypoint: {destination: "net1/10.0.0.9"}
"#;
    let store = load(text).unwrap().store;
    let service = store
        .service(&"default/web.default.svc".parse().unwrap())
        .unwrap();
    assert_eq!(
        service.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname("infra/waypoint.infra.svc".parse().unwrap()),
            hbone_mtls_port: 15009,
        })
    );
    let workload = store
        .workload_by_uid("Kubernetes//v1/Pod/default/a")
        .unwrap();
    assert_eq!(
        workload.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress::new(
                "net1",
                "10.0.0.9".parse().unwrap()
            )),
            hbone_mtls_port: 15008,
        })
    );
}

#[test]
fn bad_waypoints_name_the_entry_and_field() {
    for (waypoint, want) in [
        (
            r#"{destination: "nothing"}"#,
            "`waypoint.destination`: \"nothing\" is neither",
        ),
        (
            r#"{destination: "/127.0.0.1"}"#,
            "`waypoint.destination` 127.0.0.1:",
        ),
        (
            r#"{destination: "/10.0.0.9", hboneMtlsPort: 0}"#,
            "`waypoint.hboneMtlsPort` must not be 0",
        ),
    ] {
        let text = format!(
            "workloads:\n- {{name: a, namespace: d, workloadIps: [\"10.0.0.1\"], waypoint: {waypoint}}}\n"
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("workloads[0] (a)"), "{err}");
        assert!(err.contains(want), "{waypoint}: {err}");
    }
}

#[test]
fn a_network_gateway_is_read_like_a_waypoint() {
    let text = r#"
workloads:
- name: a
  namespace: default
  network: net-b
  workloadIps: ["10.0.0.1"]
  networkGateway: {destination: "net-b/10.0.0.9", hboneMtlsPort: 15009}
- name: b
  namespace: default
  workloadIps: ["10.0.0.2"]
  networkGateway: {destination: "istio-system/eastwest.istio-system.svc.cluster.local"}
"#;
    let loaded = load(text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let gateway = |uid: &str| {
        loaded
            .store
            .workload_by_uid(uid)
            .and_then(|w| w.network_gateway.clone())
            .map(|gw| gw.to_string())
    };
    assert_eq!(
        gateway("Kubernetes//v1/Pod/default/a").as_deref(),
        Some("net-b/10.0.0.9 (HBONE port 15009)")
    );
    assert_eq!(
        gateway("Kubernetes//v1/Pod/default/b").as_deref(),
        Some("istio-system/eastwest.istio-system.svc.cluster.local (HBONE port 15008)")
    );
    let err = load(
        "workloads:\n- {name: c, namespace: default, workloadIps: [10.0.0.3], networkGateway: {destination: nowhere}}\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`networkGateway.destination`"),
        "{err}"
    );
}
