use super::*;
use crate::state::fixtures::workload;
use crate::state::{
    Policy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, StringMatch,
};

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

/// The server workload, STRICT mTLS mesh-wide, and an ALLOW for the client on port 8080.
fn store() -> Store {
    let mut store = Store::default();
    store.insert_workload(workload("server", "10.77.2.10"));
    let one_match = |m: PolicyMatch| {
        vec![PolicyRule {
            clauses: vec![PolicyClause { matches: vec![m] }],
        }]
    };
    store.insert_policy(Policy {
        name: "istio_converted_static_strict".into(),
        namespace: "istio-system".into(),
        scope: PolicyScope::Global,
        action: PolicyAction::Deny,
        rules: one_match(PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        }),
        dry_run: false,
    });
    store.insert_policy(Policy {
        name: "allow-client".into(),
        namespace: "default".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules: one_match(PolicyMatch {
            principals: vec![StringMatch::Exact(
                "cluster.local/ns/default/sa/client".into(),
            )],
            destination_ports: vec![8080],
            ..Default::default()
        }),
        dry_run: false,
    });
    store
}

fn ask(query: &str) -> serde_json::Value {
    let explanation = explain_query(query, &store(), "").unwrap();
    serde_json::to_value(explanation).unwrap()
}

#[test]
fn plaintext_under_strict_names_the_strict_policy_and_the_field() {
    let answer = ask("source_ip=10.77.2.20&destination=10.77.2.10&port=8080");
    assert_eq!(answer["decision"], "deny");
    assert_eq!(
        answer["reason"],
        "DENY policy istio-system/istio_converted_static_strict matched"
    );
    assert_eq!(
        answer["connection"]["source_identity"],
        serde_json::Value::Null
    );
    let strict = &answer["policies"][0];
    assert_eq!(
        strict["policy"],
        "istio-system/istio_converted_static_strict"
    );
    assert_eq!(strict["scope"], "global");
    assert_eq!(strict["action"], "DENY");
    assert_eq!(strict["decided"], true);
    assert_eq!(strict["why"], "rule 0 matched");
    let field = &strict["rules"][0]["clauses"][0]["matches"][0]["fields"][0];
    assert_eq!(field["field"], "not_principals");
    assert_eq!(field["holds"], true);
    assert_eq!(
        field["why"],
        "no verified identity (plaintext), so no principal: none of the excluded values can match"
    );
    // The ALLOW policy is listed too, with why it did not match.
    let allow = &answer["policies"][1];
    assert_eq!(allow["policy"], "default/allow-client");
    assert_eq!(allow["matched"], false);
    assert_eq!(allow["decided"], false);
}

#[test]
fn the_allowed_client_names_the_allow_policy() {
    let query = format!(
        "source_identity={}&source_ip=10.77.1.10&destination=server&port=8080",
        form_urlencoded::byte_serialize(CLIENT.as_bytes()).collect::<String>()
    );
    let answer = ask(&query);
    assert_eq!(answer["decision"], "allow");
    assert_eq!(
        answer["reason"],
        "ALLOW policy default/allow-client matched"
    );
    assert_eq!(
        answer["connection"]["source_principal"],
        "cluster.local/ns/default/sa/client"
    );
    assert_eq!(answer["policies"][1]["decided"], true);
    let strict = &answer["policies"][0];
    assert_eq!(strict["matched"], false);
    assert_eq!(
        strict["rules"][0]["clauses"][0]["matches"][0]["fields"][0]["why"],
        "source principal \"cluster.local/ns/default/sa/client\" matches excluded presence (any value)"
    );
}

#[test]
fn another_port_says_which_field_failed() {
    let answer = ask(&format!(
        "source_identity={CLIENT}&source_ip=10.77.1.10&destination=10.77.2.10&port=9090"
    ));
    assert_eq!(answer["decision"], "deny");
    assert_eq!(
        answer["reason"],
        "no ALLOW policy matched (ALLOW policies applying: default/allow-client)"
    );
    let m = &answer["policies"][1]["rules"][0]["clauses"][0]["matches"][0];
    assert_eq!(m["why"], "destination_ports does not hold");
    assert_eq!(
        m["fields"][1]["why"],
        "destination port 9090 matches none of the values"
    );
}

#[test]
fn bad_queries_say_what_is_wrong() {
    let store = store();
    let err = |q: &str| explain_query(q, &store, "").unwrap_err().to_string();
    assert_eq!(
        err("destination=10.77.2.10&port=80"),
        "missing query parameter `source_ip` (expected source_identity, source_ip, destination, port)"
    );
    assert_eq!(
        err("source_ip=nope&destination=10.77.2.10&port=80"),
        "`source_ip`: \"nope\" is not an IP address"
    );
    assert_eq!(
        err("source_ip=10.0.0.1&destination=10.77.2.10&port=0"),
        "`port`: \"0\" is not a port (1-65535)"
    );
    assert!(
        err("source_identity=bob&source_ip=10.0.0.1&destination=10.77.2.10&port=80")
            .starts_with("`source_identity`: \"bob\" is not a SPIFFE identity")
    );
    assert_eq!(
        err("source_ip=10.0.0.1&destination=10.9.9.9&port=80"),
        "no workload has address 10.9.9.9"
    );
    assert_eq!(
        err("source_ip=10.0.0.1&destination=ghost&port=80"),
        "no workload has uid \"ghost\""
    );
    assert!(err("source_ip=10.0.0.1&destination=server&port=80&dst=x")
        .starts_with("unknown query parameter `dst`"));
}
