use super::*;
use crate::state::fixtures::{policy, workload};
use crate::state::{Policy, PolicyAction};

fn connection(source_identity: Option<Identity>) -> ConnectionInfo {
    ConnectionInfo {
        source_identity,
        source_ip: "10.77.1.10".parse().unwrap(),
        destination: Arc::new(workload("server", "10.77.2.10")),
        destination_addr: "10.77.2.10:8080".parse().unwrap(),
    }
}

#[test]
fn every_connection_is_allowed_until_policies_are_enforced() {
    let mut store = Store::default();
    store
        .insert_workload(workload("server", "10.77.2.10"))
        .unwrap();
    // Even a namespace-wide DENY policy with a match-everything rule is not enforced yet.
    store.insert_policy(Policy {
        action: PolicyAction::Deny,
        rules: vec![Default::default()],
        ..policy("default", "deny-all")
    });
    let client = Identity::new("cluster.local", "default", "client");
    for info in [connection(Some(client)), connection(None)] {
        assert_eq!(
            authorize(&info, &store),
            Decision::Allow(AllowReason::NoEnforcement),
            "{info:?}"
        );
    }
}

#[test]
fn decisions_say_why() {
    assert_eq!(
        Decision::Allow(AllowReason::NoEnforcement).to_string(),
        "allowed: no policy enforcement yet"
    );
    assert_eq!(
        Decision::Deny(DenyReason::DenyPolicy {
            policy: "default/deny-all".into()
        })
        .to_string(),
        "denied: DENY policy default/deny-all matched"
    );
    assert_eq!(
        DenyReason::NoAllowPolicyMatched {
            destination: "spiffe://cluster.local/ns/default/sa/server".into()
        }
        .to_string(),
        "no ALLOW policy for spiffe://cluster.local/ns/default/sa/server matched"
    );
}
