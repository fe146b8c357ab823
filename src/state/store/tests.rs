use super::*;
use crate::state::fixtures::{policy, service, workload};

#[test]
fn indexes_workloads_by_ip_and_uid_and_follows_updates() {
    let mut store = Store::default();
    store.insert_workload(workload("a", "10.0.0.1"));
    assert_eq!(
        store
            .workload_by_ip("", "10.0.0.1".parse().unwrap())
            .unwrap()
            .uid,
        "a"
    );
    // Moving the workload to a new IP drops the old index entry.
    store.insert_workload(workload("a", "10.0.0.2"));
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
fn several_workloads_share_an_address_until_the_last_one_goes() {
    // istiod sends every host-network pod with its node's IP, and a new pod may arrive before
    // the old pod with the same IP is removed: neither conflicts.
    let mut store = Store::default();
    let mut node_agent = workload("Kubernetes//Pod/kube-system/agent", "10.0.0.1");
    node_agent.protocol = crate::state::types::InboundProtocol::Tcp;
    store.insert_workload(workload(
        "Kubernetes/apps/v1/Deployment/default/d",
        "10.0.0.1",
    ));
    store.insert_workload(node_agent.clone());
    let mut hbone_pod = workload("Kubernetes//Pod/default/p", "10.0.0.1");
    hbone_pod.protocol = crate::state::types::InboundProtocol::Hbone;
    store.insert_workload(hbone_pod);
    let at = |store: &Store| {
        store
            .workloads_at("", ip("10.0.0.1"))
            .iter()
            .map(|w| w.uid.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(at(&store).len(), 3);
    // ztunnel's choice: a pod in the mesh, then any pod, then the earliest.
    let best = |store: &Store| {
        store
            .workload_by_ip("", ip("10.0.0.1"))
            .map(|w| w.uid.clone())
    };
    assert_eq!(best(&store).as_deref(), Some("Kubernetes//Pod/default/p"));
    store.remove_workload("Kubernetes//Pod/default/p");
    assert_eq!(
        best(&store).as_deref(),
        Some("Kubernetes//Pod/kube-system/agent")
    );
    store.remove_workload("Kubernetes//Pod/kube-system/agent");
    assert_eq!(
        best(&store).as_deref(),
        Some("Kubernetes/apps/v1/Deployment/default/d")
    );
    // Re-inserting one claimant does not duplicate it; the address goes with the last one.
    store.insert_workload(node_agent.clone());
    store.insert_workload(node_agent);
    assert_eq!(at(&store).len(), 2);
    store.remove_workload("Kubernetes//Pod/kube-system/agent");
    store.remove_workload("Kubernetes/apps/v1/Deployment/default/d");
    assert!(at(&store).is_empty());
    assert_eq!(store, Store::default(), "no index entry is left behind");
}

#[test]
fn derives_service_endpoints_from_workloads() {
    let mut store = Store::default();
    let svc = service("web.default.svc.cluster.local", "/10.96.0.1");
    let key = svc.key();
    store.insert_service(svc);
    let mut a = workload("a", "10.0.0.1");
    a.services.insert(key.clone(), HashMap::from([(80, 9090)]));
    let mut b = workload("b", "10.0.0.2");
    b.services.insert(key.clone(), HashMap::new());
    store.insert_workload(a);
    store.insert_workload(b);
    let uids: Vec<_> = store
        .endpoints(&key)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(uids, ["a", "b"]);
    store.insert_workload(workload("a", "10.0.0.1")); // a leaves the service
    let uids: Vec<_> = store
        .endpoints(&key)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(uids, ["b"]);
    assert_eq!(
        store
            .service_by_vip("", "10.96.0.1".parse().unwrap(), None)
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
        .service_by_vip("", "10.96.0.1".parse().unwrap(), None)
        .is_none());
    assert!(store
        .services_by_hostname("web.default.svc.cluster.local")
        .is_empty());
}

#[test]
fn a_vip_shared_across_namespaces_prefers_the_clients_namespace() {
    let mut store = Store::default();
    let mut other = service("ext.example.com", "/240.240.0.1");
    other.namespace = "other".into();
    store.insert_service(service("ext.example.com", "/240.240.0.1"));
    store.insert_service(other);
    fn ns(store: &Store, client: Option<&str>) -> Option<String> {
        store
            .service_by_vip("", ip("240.240.0.1"), client)
            .map(|s| s.namespace.clone())
    }
    assert_eq!(ns(&store, Some("other")).as_deref(), Some("other"));
    assert_eq!(ns(&store, Some("default")).as_deref(), Some("default"));
    // No namespace, or one with no service of its own: the earliest.
    assert_eq!(ns(&store, Some("third")).as_deref(), Some("default"));
    assert_eq!(ns(&store, None).as_deref(), Some("default"));
    store.remove_service(&key("ext.example.com"));
    assert_eq!(ns(&store, Some("default")).as_deref(), Some("other"));
    store.remove_service(&NamespacedHostname {
        namespace: "other".into(),
        hostname: "ext.example.com".into(),
    });
    assert_eq!(ns(&store, None), None);
    assert_eq!(store, Store::default(), "no index entry is left behind");
}

/// A service in `namespace` whose only VIP is the range `cidr`.
fn cidr_service(host: &str, namespace: &str, cidr: &str) -> Service {
    let mut s = service(host, "/240.240.9.9");
    s.vips.clear();
    s.namespace = namespace.into();
    s.cidr_vips = vec![NetworkCidr {
        network: String::new(),
        cidr: cidr.parse().unwrap(),
    }];
    s
}

#[test]
fn a_shared_vip_without_a_service_in_the_clients_namespace_prefers_the_canonical_one() {
    let mut store = Store::default();
    store.insert_service(service("ext.example.com", "/240.240.0.1"));
    let mut canonical = service("ext.example.com", "/240.240.0.1");
    canonical.namespace = "istio-system".into();
    canonical.canonical = true;
    store.insert_service(canonical);
    let by = |client| {
        store
            .service_by_vip("", ip("240.240.0.1"), client)
            .map(|s| s.namespace.clone())
    };
    assert_eq!(by(Some("third")).as_deref(), Some("istio-system"));
    assert_eq!(by(None).as_deref(), Some("istio-system"));
    assert_eq!(by(Some("default")).as_deref(), Some("default"));
    // The same order by hostname.
    let by_host = |ns| store.service_by_hostname("ext.example.com", ns).unwrap();
    assert_eq!(by_host("third").namespace, "istio-system");
    assert_eq!(by_host("default").namespace, "default");
}

#[test]
fn a_cidr_vip_matches_every_address_in_its_range_ranked_as_ztunnel_ranks() {
    let mut store = Store::default();
    store.insert_service(cidr_service("wide.example.com", "a", "10.50.0.0/16"));
    store.insert_service(cidr_service("narrow.example.com", "b", "10.50.1.0/24"));
    fn host(store: &Store, client: Option<&str>, addr: &str) -> Option<String> {
        store
            .service_by_vip("", ip(addr), client)
            .map(|s| s.hostname.clone())
    }
    // Longest prefix wins among other namespaces' ranges...
    assert_eq!(
        host(&store, None, "10.50.1.7").as_deref(),
        Some("narrow.example.com")
    );
    assert_eq!(
        host(&store, Some("c"), "10.50.1.7").as_deref(),
        Some("narrow.example.com")
    );
    // ...but a range in the client's own namespace beats a more specific one elsewhere.
    assert_eq!(
        host(&store, Some("a"), "10.50.1.7").as_deref(),
        Some("wide.example.com")
    );
    assert_eq!(
        host(&store, None, "10.50.2.7").as_deref(),
        Some("wide.example.com")
    );
    assert_eq!(host(&store, None, "10.51.0.1"), None);
    // Another network's range never matches.
    assert!(store
        .service_by_vip("net2", ip("10.50.1.7"), None)
        .is_none());
    // An exact VIP beats any range containing it.
    store.insert_service(service("exact.example.com", "/10.50.1.7"));
    assert_eq!(
        host(&store, Some("a"), "10.50.1.7").as_deref(),
        Some("exact.example.com")
    );
    // Equal ranges: canonical first, then the earliest.
    store.insert_service(cidr_service("second.example.com", "b", "10.50.1.0/24"));
    assert_eq!(
        host(&store, None, "10.50.1.8").as_deref(),
        Some("narrow.example.com")
    );
    let mut canonical = cidr_service("canon.example.com", "b", "10.50.1.0/24");
    canonical.canonical = true;
    store.insert_service(canonical);
    assert_eq!(
        host(&store, None, "10.50.1.8").as_deref(),
        Some("canon.example.com")
    );
    // Removing the services removes their ranges.
    for (host, ns) in [
        ("wide.example.com", "a"),
        ("narrow.example.com", "b"),
        ("second.example.com", "b"),
        ("canon.example.com", "b"),
    ] {
        store.remove_service(&NamespacedHostname {
            namespace: ns.into(),
            hostname: host.into(),
        });
    }
    store.remove_service(&key("exact.example.com"));
    assert_eq!(store, Store::default(), "no index entry is left behind");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(host: &str) -> NamespacedHostname {
    NamespacedHostname {
        namespace: "default".into(),
        hostname: host.into(),
    }
}

/// Workloads a (in s1), b and x; services s1 and s2; policy default/p1.
fn mesh() -> Store {
    let mut store = Store::default();
    store.insert_service(service("s1", "/10.96.0.1"));
    store.insert_service(service("s2", "/10.96.0.2"));
    let mut a = workload("a", "10.0.0.1");
    a.services.insert(key("s1"), HashMap::new());
    store.insert_workload(a);
    store.insert_workload(workload("b", "10.0.0.2"));
    store.insert_workload(workload("x", "10.0.0.5"));
    store.insert_policy(policy("default", "p1"));
    store
}

/// A delta touching every kind of change; its workload `e` shares `x`'s address.
fn delta_touching_everything() -> StoreDelta {
    let mut c = workload("c", "10.0.0.3");
    c.services.insert(key("s3"), HashMap::new());
    let mut s1 = service("s1", "/10.96.0.1");
    s1.vips.push("/10.96.0.9".parse().unwrap());
    StoreDelta {
        removed_addresses: vec!["a".into(), "default/s2".into()],
        removed_policies: vec!["default/p1".into()],
        services: vec![service("s3", "/10.96.0.3"), s1],
        workloads: vec![
            c,
            workload("b", "10.0.0.4"),
            workload("e", "10.0.0.5"),
            workload("f", "10.0.0.6"),
        ],
        policies: vec![policy("default", "p2")],
    }
}

#[test]
fn apply_makes_every_change() {
    let mut store = mesh();
    store.apply(delta_touching_everything());
    assert!(store.workload_by_uid("a").is_none());
    assert!(store.service(&key("s2")).is_none());
    assert!(store.service_by_vip("", ip("10.96.0.2"), None).is_none());
    assert!(store.policy("default/p1").is_none());
    assert!(store.policy("default/p2").is_some());
    assert_eq!(
        store
            .service_by_vip("", ip("10.96.0.9"), None)
            .unwrap()
            .name,
        "s1"
    );
    // a left s1's endpoints with its removal; c joined s3 in the same delta.
    assert!(store.endpoints(&key("s1")).is_empty());
    assert_eq!(store.endpoints(&key("s3"))[0].uid, "c");
    assert!(store.workload_by_ip("", ip("10.0.0.2")).is_none());
    assert_eq!(store.workload_by_ip("", ip("10.0.0.4")).unwrap().uid, "b");
    // e joined x on its address.
    assert_eq!(store.workloads_at("", ip("10.0.0.5")).len(), 2);
    let mut uids: Vec<_> = store.workloads().map(|w| w.uid.as_str()).collect();
    uids.sort();
    assert_eq!(uids, ["b", "c", "e", "f", "x"]);
}

#[test]
fn apply_moves_an_ip_from_a_removed_workload_to_an_added_one() {
    let mut store = mesh();
    let delta = StoreDelta {
        removed_addresses: vec!["a".into()],
        workloads: vec![workload("new", "10.0.0.1")],
        ..StoreDelta::default()
    };
    store.apply(delta);
    assert_eq!(store.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "new");
}

#[test]
fn apply_does_not_depend_on_the_order_of_entries() {
    // b takes a's IP before a, later in the same delta, moves on; then a and b swap.
    let mut store = mesh();
    let delta = StoreDelta {
        workloads: vec![workload("b", "10.0.0.1"), workload("a", "10.0.0.7")],
        ..StoreDelta::default()
    };
    store.apply(delta);
    assert_eq!(store.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "b");
    let swap = StoreDelta {
        workloads: vec![workload("a", "10.0.0.1"), workload("b", "10.0.0.7")],
        services: vec![service("s1", "/10.96.0.2"), service("s2", "/10.96.0.1")],
        ..StoreDelta::default()
    };
    store.apply(swap);
    assert_eq!(store.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "a");
    assert_eq!(
        store
            .service_by_vip("", ip("10.96.0.1"), None)
            .unwrap()
            .name,
        "s2"
    );
    // Two entries of one delta claiming the same address both hold it.
    let twice = StoreDelta {
        workloads: vec![workload("c", "10.0.0.3"), workload("d", "10.0.0.3")],
        ..StoreDelta::default()
    };
    store.apply(twice);
    assert_eq!(store.workloads_at("", ip("10.0.0.3")).len(), 2);
}

#[test]
fn apply_removes_by_uid_then_service_key_and_ignores_unknown_names() {
    let mut store = mesh();
    let delta = StoreDelta {
        removed_addresses: vec![
            "b".into(),
            "default/s1".into(),
            "nobody".into(),
            "default/missing".into(),
            "Kubernetes//v1/Pod/default/gone".into(),
        ],
        removed_policies: vec!["default/none".into()],
        ..StoreDelta::default()
    };
    store.apply(delta);
    assert!(store.workload_by_uid("b").is_none());
    assert!(store.service(&key("s1")).is_none());
    assert!(store.services_by_hostname("s1").is_empty());
    assert!(store.service(&key("s2")).is_some());
    assert_eq!(store.workloads().len(), 2);
    assert_eq!(store.policies().len(), 1);
}

#[test]
fn repeated_keys_in_one_delta_keep_the_last() {
    let mut store = mesh();
    let mut second = policy("default", "p1");
    second.action = crate::state::types::PolicyAction::Deny;
    let delta = StoreDelta {
        policies: vec![policy("default", "p1"), second.clone()],
        workloads: vec![workload("b", "10.0.0.8"), workload("b", "10.0.0.9")],
        ..StoreDelta::default()
    };
    store.apply(delta);
    assert_eq!(*store.policy("default/p1").unwrap(), second);
    assert!(store.workload_by_ip("", ip("10.0.0.8")).is_none());
    assert_eq!(store.workload_by_ip("", ip("10.0.0.9")).unwrap().uid, "b");
}

#[test]
fn policies_are_kept_by_namespace_and_name() {
    let mut store = Store::default();
    assert!(store.insert_policy(policy("ns", "a")).is_none());
    assert!(store.insert_policy(policy("ns", "a")).is_some());
    store.insert_policy(policy("other", "a"));
    assert_eq!(store.policies().len(), 2);
    assert_eq!(store.policy("ns/a").unwrap().namespace, "ns");
    assert!(store.remove_policy("ns/a").is_some());
    assert!(store.policy("ns/a").is_none());
    assert!(store.remove_policy("ns/a").is_none());
}

#[test]
fn delta_is_empty_only_without_changes() {
    assert!(StoreDelta::default().is_empty());
    let delta = StoreDelta {
        removed_policies: vec!["a/b".into()],
        ..StoreDelta::default()
    };
    assert!(!delta.is_empty());
}

fn keys(store: &Store, w: &Workload) -> (Vec<(PolicyScope, String)>, Vec<String>) {
    let found = store.policies_for(w);
    (
        found
            .policies
            .iter()
            .map(|(scope, p)| (*scope, p.key()))
            .collect(),
        found.missing,
    )
}

fn scoped(namespace: &str, name: &str, scope: PolicyScope) -> Policy {
    Policy {
        scope,
        ..policy(namespace, name)
    }
}

#[test]
fn policies_apply_by_scope_and_selection() {
    use PolicyScope::{Global, Namespace, WorkloadSelector};
    let mut store = Store::default();
    store.insert_policy(scoped("istio-system", "mesh", Global));
    store.insert_policy(scoped("default", "ns-b", Namespace));
    store.insert_policy(scoped("default", "ns-a", Namespace));
    store.insert_policy(scoped("other", "ns", Namespace));
    store.insert_policy(scoped("default", "picked", WorkloadSelector));
    store.insert_policy(scoped("default", "not-picked", WorkloadSelector));
    let mut w = workload("a", "10.0.0.1");
    w.authorization_policies = vec![
        "default/picked".into(),
        "default/in-flight".into(),
        // Listed, but namespace-scoped elsewhere: applies only by its own scope.
        "other/ns".into(),
        "default/picked".into(),
    ];
    store.insert_workload(w);
    let w = store.workload_by_uid("a").unwrap();
    assert_eq!(
        w.authorization_policies,
        ["default/picked", "default/in-flight", "other/ns"],
        "stored once each, in first-mention order"
    );
    assert_eq!(
        keys(&store, &w),
        (
            vec![
                (Global, "istio-system/mesh".into()),
                (Namespace, "default/ns-a".into()),
                (Namespace, "default/ns-b".into()),
                (WorkloadSelector, "default/picked".into()),
            ],
            vec!["default/in-flight".into()]
        )
    );
}

#[test]
fn a_policy_changing_scope_moves_between_indexes_and_removal_cleans_them() {
    let w = workload("a", "10.0.0.1");
    let mut store = Store::default();
    store.insert_policy(scoped("default", "p", PolicyScope::Namespace));
    assert_eq!(keys(&store, &w).0.len(), 1);
    // The same key, now mesh-wide: it must not stay in the namespace index too.
    store.insert_policy(scoped("default", "p", PolicyScope::Global));
    assert_eq!(
        keys(&store, &w).0,
        vec![(PolicyScope::Global, "default/p".to_string())]
    );
    store.remove_policy("default/p");
    assert_eq!(keys(&store, &w).0, vec![]);
    assert_eq!(store, Store::default(), "no index entry is left behind");
}

#[test]
fn host_network_workloads_are_not_found_by_address() {
    // ztunnel's rule: a host-network pod's address is its node's and identifies nothing.
    let mut store = Store::default();
    let mut agent = workload("Kubernetes//Pod/kube-system/agent", "10.0.0.1");
    agent.host_network = true;
    store.insert_workload(agent);
    assert!(store.workloads_at("", ip("10.0.0.1")).is_empty());
    assert!(store.workload_by_ip("", ip("10.0.0.1")).is_none());
    assert!(store
        .workload_by_uid("Kubernetes//Pod/kube-system/agent")
        .is_some());
    store.insert_workload(workload("pod", "10.0.0.1"));
    assert_eq!(store.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "pod");
    store.remove_workload("Kubernetes//Pod/kube-system/agent");
    store.remove_workload("pod");
    assert_eq!(store, Store::default(), "no index entry is left behind");
}
