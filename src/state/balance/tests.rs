use std::sync::Arc;

use super::{choose, NoEndpoint};
use crate::state::fixtures::workload;
use crate::state::types::{
    HealthStatus, LbHealthPolicy, LbMode, LbScope, LoadBalancing, Locality, Workload,
};

fn at(uid: &str, region: &str, zone: &str) -> Workload {
    let mut w = workload(uid, "10.0.0.1");
    w.locality = Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    w
}

fn eps(ws: Vec<Workload>) -> Vec<Arc<Workload>> {
    ws.into_iter().map(Arc::new).collect()
}

fn lb(mode: LbMode, prefs: &[LbScope]) -> LoadBalancing {
    LoadBalancing {
        routing_preference: prefs.to_vec(),
        mode,
        health_policy: LbHealthPolicy::OnlyHealthy,
    }
}

const RZ: &[LbScope] = &[LbScope::Region, LbScope::Zone];

/// Every point below the total, mapped to the uid it picks.
fn spread(
    endpoints: &[Arc<Workload>],
    lb: Option<&LoadBalancing>,
    client: &Workload,
) -> Vec<String> {
    let mut total = 0;
    choose(endpoints, lb, Some(client), |t| {
        total = t;
        0
    })
    .unwrap();
    (0..total)
        .map(|p| {
            choose(endpoints, lb, Some(client), |_| p)
                .unwrap()
                .uid
                .clone()
        })
        .collect()
}

#[test]
fn failover_prefers_the_endpoints_sharing_the_most_leading_scopes() {
    let client = at("client", "r1", "z1");
    let endpoints = eps(vec![
        at("other-region", "r2", "z1"),
        at("same-region", "r1", "z2"),
        at("same-zone", "r1", "z1"),
        at("same-zone-2", "r1", "z1"),
    ]);
    let lb = lb(LbMode::Failover, RZ);
    assert_eq!(
        spread(&endpoints, Some(&lb), &client),
        ["same-zone", "same-zone-2"]
    );
}

#[test]
fn failover_falls_back_to_the_best_rank_left() {
    let client = at("client", "r1", "z1");
    let lb = lb(LbMode::Failover, RZ);
    let endpoints = eps(vec![
        at("other-region", "r2", "z1"),
        at("same-region", "r1", "z2"),
    ]);
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["same-region"]);
    // A zone match does not count once the region differs: the count stops at a mismatch.
    let endpoints = eps(vec![at("a", "r2", "z1"), at("b", "r3", "z9")]);
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["a", "b"]);
}

#[test]
fn strict_keeps_only_full_matches_and_fails_without_one() {
    let client = at("client", "r1", "z1");
    let lb = lb(LbMode::Strict, RZ);
    let endpoints = eps(vec![
        at("same-region", "r1", "z2"),
        at("same-zone", "r1", "z1"),
    ]);
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["same-zone"]);
    let endpoints = eps(vec![at("same-region", "r1", "z2")]);
    assert_eq!(
        choose(&endpoints, Some(&lb), Some(&client), |_| 0),
        Err(NoEndpoint::OutOfScope)
    );
}

#[test]
fn without_a_mode_scopes_are_ignored() {
    let client = at("client", "r1", "z1");
    let endpoints = eps(vec![at("far", "r2", "z2"), at("near", "r1", "z1")]);
    assert_eq!(
        spread(&endpoints, Some(&lb(LbMode::Standard, RZ)), &client),
        ["far", "near"]
    );
    assert_eq!(spread(&endpoints, None, &client), ["far", "near"]);
}

#[test]
fn network_first_is_a_tier_above_the_other_scopes() {
    let client = at("client", "r1", "z1");
    let mut remote_same_zone = at("remote-same-zone", "r1", "z1");
    remote_same_zone.network = "net2".into();
    let local_far = at("local-far", "r2", "z2");
    let lb = lb(LbMode::Failover, &[LbScope::Network, LbScope::Region]);
    let endpoints = eps(vec![remote_same_zone, local_far]);
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["local-far"]);
}

#[test]
fn node_and_cluster_scopes_compare_the_workloads() {
    let client = at("client", "r1", "z1");
    let mut other_node = at("other-node", "r1", "z1");
    other_node.node = "n2".into();
    let mut other_cluster = at("other-cluster", "r1", "z1");
    other_cluster.cluster_id = "c2".into();
    let endpoints = eps(vec![other_node, other_cluster, at("same", "r1", "z1")]);
    let lb_node = lb(LbMode::Strict, &[LbScope::Node]);
    assert_eq!(
        spread(&endpoints, Some(&lb_node), &client),
        ["other-cluster", "same"]
    );
    let lb_cluster = lb(LbMode::Strict, &[LbScope::Cluster]);
    assert_eq!(
        spread(&endpoints, Some(&lb_cluster), &client),
        ["other-node", "same"]
    );
}

#[test]
fn capacity_weights_the_pick_and_zero_is_never_picked() {
    let client = at("client", "r1", "z1");
    let mut heavy = at("heavy", "r1", "z1");
    heavy.capacity = 3;
    let mut zero = at("zero", "r1", "z1");
    zero.capacity = 0;
    let endpoints = eps(vec![heavy, zero, at("light", "r1", "z1")]);
    assert_eq!(
        spread(&endpoints, None, &client),
        ["heavy", "heavy", "heavy", "light"]
    );
    // Points above the total wrap instead of failing.
    assert_eq!(
        choose(&endpoints, None, Some(&client), |_| 5).unwrap().uid,
        "heavy"
    );
    let mut only_zero = at("zero", "r1", "z1");
    only_zero.capacity = 0;
    assert_eq!(
        choose(&eps(vec![only_zero]), None, Some(&client), |_| 0),
        Err(NoEndpoint::NoCapacity)
    );
}

#[test]
fn a_seeded_picker_spreads_by_capacity() {
    let client = at("client", "r1", "z1");
    let mut heavy = at("heavy", "r1", "z1");
    heavy.capacity = 3;
    let endpoints = eps(vec![heavy, at("light", "r1", "z1")]);
    // A fixed linear congruential sequence: deterministic, roughly uniform.
    let mut state: u64 = 42;
    let mut heavy_count = 0;
    for _ in 0..4000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = choose(&endpoints, None, Some(&client), |t| (state >> 33) % t).unwrap();
        if w.uid == "heavy" {
            heavy_count += 1;
        }
    }
    assert!(
        (2800..3200).contains(&heavy_count),
        "heavy picked {heavy_count} of 4000"
    );
}

#[test]
fn only_healthy_unless_allow_all() {
    let client = at("client", "r1", "z1");
    let mut sick = at("sick", "r1", "z1");
    sick.status = HealthStatus::Unhealthy;
    let endpoints = eps(vec![sick, at("far", "r2", "z2")]);
    let mut lb = lb(LbMode::Failover, RZ);
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["far"]);
    lb.health_policy = LbHealthPolicy::AllowAll;
    assert_eq!(spread(&endpoints, Some(&lb), &client), ["sick"]);
    let only_sick = vec![endpoints[0].clone()];
    assert_eq!(
        choose(&only_sick, None, Some(&client), |_| 0),
        Err(NoEndpoint::Unhealthy)
    );
}
