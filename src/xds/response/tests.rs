use nodetunnel_proto::envoy::service::discovery::v3::ResourceName;
use nodetunnel_proto::istio::security::{Action, Scope};
use nodetunnel_proto::istio::workload::{address, TunnelProtocol, Workload};
use prost_types::Any;

use super::*;

fn workload(uid: &str, ip: [u8; 4]) -> Address {
    workload_bytes(uid, ip.to_vec())
}

fn workload_bytes(uid: &str, ip: Vec<u8>) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "sa".into(),
            trust_domain: "cluster.local".into(),
            addresses: vec![ip],
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            node: "n1".into(),
            ..Default::default()
        })),
    }
}

fn resource<M: Message>(name: &str, type_url: &str, msg: &M) -> Resource {
    Resource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value: msg.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn addr(name: &str, msg: &Address) -> Resource {
    resource(name, WORKLOAD_ADDRESS_TYPE_URL, msg)
}

fn response(resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
        nonce: "n1".into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn problems(r: Applied) -> Vec<Problem> {
    match r.rejection {
        Some(Rejection::Invalid { problems, .. }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The response was applied whole: ACKed.
fn clean(r: Applied) -> Applied {
    assert!(r.rejection.is_none(), "{:?}", r.rejection);
    r
}

#[test]
fn applies_workloads_and_removals() {
    let state = StateHandle::default();
    let d = Defaults::default();
    let applied = clean(apply(
        ResourceType::Address,
        response(
            vec![
                addr("uid-a", &workload("uid-a", [10, 0, 0, 1])),
                addr("uid-b", &workload("uid-b", [10, 0, 0, 2])),
            ],
            &[],
        ),
        &state,
        &d,
    ));
    assert_eq!(applied.updated.len(), 2);
    assert!(state.read().workload_by_uid("uid-a").is_some());

    let applied = clean(apply(
        ResourceType::Address,
        response(vec![], &["uid-a"]),
        &state,
        &d,
    ));
    assert_eq!(applied.removed, vec!["uid-a".to_string()]);
    assert!(state.read().workload_by_uid("uid-a").is_none());
    assert!(state.read().workload_by_uid("uid-b").is_some());
}

#[test]
fn one_bad_resource_is_refused_alone() {
    let state = StateHandle::default();
    let d = Defaults::default();
    let r = apply(
        ResourceType::Address,
        response(
            vec![
                addr("uid-good", &workload("uid-good", [10, 0, 0, 1])),
                addr("uid-bad", &workload_bytes("uid-bad", vec![10, 0, 0, 1, 9])),
            ],
            &[],
        ),
        &state,
        &d,
    );
    let p = problems(r);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].name, "uid-bad");
    // The good one is applied all the same (ztunnel's rule): one bad resource must not freeze
    // every other update.
    assert!(state.read().workload_by_uid("uid-good").is_some());
    assert!(state.read().workload_by_uid("uid-bad").is_none());
}

#[test]
fn a_refused_update_keeps_the_version_already_held() {
    let state = StateHandle::default();
    let d = Defaults::default();
    clean(apply(
        ResourceType::Address,
        response(vec![addr("uid-a", &workload("uid-a", [10, 0, 0, 1]))], &[]),
        &state,
        &d,
    ));
    let r = apply(
        ResourceType::Address,
        response(
            vec![addr("uid-a", &workload_bytes("uid-a", vec![10, 0, 0]))],
            &[],
        ),
        &state,
        &d,
    );
    assert_eq!(problems(r)[0].name, "uid-a");
    let kept = state.read().workload_by_uid("uid-a").unwrap();
    assert_eq!(
        kept.workload_ips,
        vec![std::net::IpAddr::from([10, 0, 0, 1])]
    );
}

#[test]
fn an_unknown_enum_value_skips_the_resource_without_a_nack() {
    let state = StateHandle::default();
    let d = Defaults::default();
    let mut newer = workload("uid-new", [10, 0, 0, 2]);
    if let Some(address::Type::Workload(w)) = &mut newer.r#type {
        w.tunnel_protocol = 7; // a protocol a newer istiod knows
    }
    let mut policy = Authorization {
        name: "audit".into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        ..Default::default()
    };
    policy.action = 9;
    let r = apply(
        ResourceType::Address,
        response(
            vec![
                addr("uid-a", &workload("uid-a", [10, 0, 0, 1])),
                addr("uid-new", &newer),
            ],
            &[],
        ),
        &state,
        &d,
    );
    let r = clean(r);
    assert_eq!(r.ignored.len(), 1);
    assert_eq!(r.ignored[0].name, "uid-new");
    assert!(
        r.ignored[0].reason.contains("tunnel_protocol"),
        "{:?}",
        r.ignored
    );
    assert!(state.read().workload_by_uid("uid-a").is_some());
    assert!(state.read().workload_by_uid("uid-new").is_none());

    let mut resp = response(
        vec![resource("default/audit", AUTHORIZATION_TYPE_URL, &policy)],
        &[],
    );
    resp.type_url = AUTHORIZATION_TYPE_URL.into();
    let r = clean(apply(ResourceType::Authorization, resp, &state, &d));
    assert_eq!(r.ignored[0].name, "default/audit");
    assert_eq!(state.read().policies().count(), 0);
}

#[test]
fn envelope_problems_are_named() {
    let state = StateHandle::default();
    let d = Defaults::default();
    let w = workload("uid-a", [10, 0, 0, 1]);
    let mut no_body = addr("uid-c", &w);
    no_body.resource = None;
    let r = apply(
        ResourceType::Address,
        response(
            vec![
                addr("", &w),
                addr("uid-a", &w),
                addr("uid-a", &w),
                resource("uid-b", AUTHORIZATION_TYPE_URL, &Authorization::default()),
                no_body,
                Resource {
                    name: "uid-d".into(),
                    resource: Some(Any {
                        type_url: WORKLOAD_ADDRESS_TYPE_URL.into(),
                        value: vec![0xff, 0xff, 0xff],
                    }),
                    ..Default::default()
                },
            ],
            &["uid-a"],
        ),
        &state,
        &d,
    );
    let p = problems(r);
    let reason = |name: &str| -> Vec<String> {
        p.iter()
            .filter(|x| x.name == name)
            .map(|x| x.reason.clone())
            .collect()
    };
    assert!(reason("#0")[0].contains("no name"), "{p:?}");
    assert!(
        reason("uid-a").iter().any(|r| r.contains("more than once")),
        "{p:?}"
    );
    assert!(
        reason("uid-a")
            .iter()
            .any(|r| r.contains("both updated and removed")),
        "{p:?}"
    );
    assert!(
        reason("uid-b")[0].contains("istio.security.Authorization"),
        "{p:?}"
    );
    assert!(reason("uid-c")[0].contains("no body"), "{p:?}");
    assert!(
        reason("uid-d")[0].contains("not a valid istio.workload.Address"),
        "{p:?}"
    );
    assert!(state.read().workloads().next().is_none());
}

#[test]
fn workloads_sharing_an_address_are_all_accepted() {
    let state = StateHandle::default();
    let d = Defaults::default();
    clean(apply(
        ResourceType::Address,
        response(
            vec![
                addr("uid-a", &workload("uid-a", [10, 0, 0, 1])),
                addr("uid-b", &workload("uid-b", [10, 0, 0, 1])),
            ],
            &[],
        ),
        &state,
        &d,
    ));
    assert_eq!(state.read().workloads_at("", [10, 0, 0, 1].into()).len(), 2);
}

#[test]
fn policies_and_removed_resource_names() {
    let state = StateHandle::default();
    let d = Defaults::default();
    let policy = Authorization {
        name: "deny-80".into(),
        namespace: "default".into(),
        scope: Scope::Namespace as i32,
        action: Action::Deny as i32,
        rules: vec![],
        ..Default::default()
    };
    let mut resp = response(
        vec![resource("default/deny-80", AUTHORIZATION_TYPE_URL, &policy)],
        &[],
    );
    resp.type_url = AUTHORIZATION_TYPE_URL.into();
    clean(apply(ResourceType::Authorization, resp, &state, &d));
    assert_eq!(state.read().policies().count(), 1);

    // The newer `removed_resource_names` form counts as a removal too.
    let mut resp = response(vec![], &[]);
    resp.type_url = AUTHORIZATION_TYPE_URL.into();
    resp.removed_resource_names = vec![ResourceName {
        name: "default/deny-80".into(),
        dynamic_parameter_constraints: None,
    }];
    let applied = clean(apply(ResourceType::Authorization, resp, &state, &d));
    assert_eq!(applied.removed, vec!["default/deny-80".to_string()]);
    assert_eq!(state.read().policies().count(), 0);
}

#[test]
fn nack_text_is_bounded() {
    let problems: Vec<Problem> = (0..500)
        .map(|i| Problem {
            name: format!("uid-{i}"),
            reason: "address of 5 bytes".into(),
        })
        .collect();
    let text = Rejection::Invalid {
        total: 1000,
        problems,
    }
    .to_string();
    assert!(text.starts_with("rejected 500 of 1000 resources"), "{text}");
    assert!(text.contains("\"uid-19\""), "{text}");
    assert!(!text.contains("\"uid-20\""), "{text}");
    assert!(text.ends_with("and 480 more"), "{text}");
}

#[test]
fn type_urls_round_trip() {
    for kind in ResourceType::ALL {
        assert_eq!(ResourceType::from_type_url(kind.type_url()), Some(kind));
    }
    assert_eq!(
        ResourceType::from_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
        None
    );
    let text = Rejection::UnknownType {
        type_url: "type.googleapis.com/x.Y".into(),
    }
    .to_string();
    assert!(
        text.contains("x.Y") && text.contains(WORKLOAD_ADDRESS_TYPE_URL),
        "{text}"
    );
}
