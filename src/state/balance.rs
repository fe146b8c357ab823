//! Which endpoint of a service a connection goes to, as `istio.workload.LoadBalancing` and
//! ztunnel define it: candidates are the healthy endpoints (all of them under ALLOW_ALL);
//! STRICT and FAILOVER keep those sharing the most leading routing-preference scopes with the
//! client (STRICT: only those sharing all of them); the pick among what remains is random,
//! weighted by each workload's `capacity` (0 is never picked).
//!
//! This runs once per outbound connection, so it walks the endpoint list in place (twice: the
//! best rank, then the weighted pick) and allocates nothing.

use std::sync::Arc;

use super::types::{HealthStatus, LbHealthPolicy, LbMode, LbScope, LoadBalancing, Workload};

/// Why no endpoint was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoEndpoint {
    /// No endpoint passes the health policy.
    Unhealthy,
    /// STRICT: no endpoint shares every preferred scope with the client.
    OutOfScope,
    /// Every candidate has capacity 0.
    NoCapacity,
}

/// Chooses among `endpoints` for a connection from `client` (`None` when unknown: scopes are
/// then ignored, as for a service without preferences). `pick` gets the total capacity of the
/// candidates and returns a point below it (values above wrap), so tests can be deterministic.
pub(crate) fn choose<'a>(
    endpoints: &'a [Arc<Workload>],
    lb: Option<&LoadBalancing>,
    client: Option<&Workload>,
    pick: impl FnOnce(u64) -> u64,
) -> Result<&'a Arc<Workload>, NoEndpoint> {
    let allow_all = lb.is_some_and(|lb| lb.health_policy == LbHealthPolicy::AllowAll);
    let admitted = |w: &&Arc<Workload>| allow_all || w.status == HealthStatus::Healthy;
    // Scopes apply under STRICT and FAILOVER, when the client is known.
    let ranked = match (lb, client) {
        (Some(lb), Some(client)) if matches!(lb.mode, LbMode::Strict | LbMode::Failover) => {
            Some((lb, client))
        }
        _ => None,
    };
    let score = |w: &Workload| ranked.and_then(|(lb, client)| score(lb, client, w));
    let mut any = false;
    let mut best = None::<usize>;
    for w in endpoints.iter().filter(admitted) {
        any = true;
        best = best.max(score(w));
    }
    if !any {
        return Err(NoEndpoint::Unhealthy);
    }
    if ranked.is_some() && best.is_none() {
        return Err(NoEndpoint::OutOfScope);
    }
    let in_best = |w: &&Arc<Workload>| ranked.is_none() || score(w) == best;
    let total: u64 = endpoints
        .iter()
        .filter(admitted)
        .filter(&in_best)
        .map(|w| u64::from(w.capacity))
        .sum();
    if total == 0 {
        return Err(NoEndpoint::NoCapacity);
    }
    let mut point = pick(total) % total;
    for w in endpoints.iter().filter(admitted).filter(&in_best) {
        let c = u64::from(w.capacity);
        if point < c {
            return Ok(w);
        }
        point -= c;
    }
    // The walk covers exactly `total`, so a point below it always lands.
    Err(NoEndpoint::NoCapacity)
}

/// The endpoint's rank (higher is better), or `None` when STRICT excludes it. The rank is how
/// many leading preferences the endpoint shares with the client, counted as ztunnel does: a
/// mismatch ends the count; but when NETWORK comes first it is a tier of its own — an
/// endpoint on the client's network outranks every endpoint elsewhere, and the other scopes
/// still rank endpoints within each tier. STRICT needs every preference shared.
fn score(lb: &LoadBalancing, client: &Workload, endpoint: &Workload) -> Option<usize> {
    let prefs = &lb.routing_preference;
    let network_first = prefs.first() == Some(&LbScope::Network);
    let mut rank = 0;
    let mut bonus = 0;
    for scope in prefs {
        let same = match scope {
            LbScope::Region => client.locality.region == endpoint.locality.region,
            LbScope::Zone => client.locality.zone == endpoint.locality.zone,
            LbScope::Subzone => client.locality.subzone == endpoint.locality.subzone,
            LbScope::Node => client.node == endpoint.node,
            LbScope::Cluster => client.cluster_id == endpoint.cluster_id,
            LbScope::Network => {
                let same = client.network == endpoint.network;
                if network_first {
                    if !same {
                        continue;
                    }
                    bonus = prefs.len() - 1;
                }
                same
            }
        };
        if !same {
            break;
        }
        rank += 1;
    }
    if lb.mode == LbMode::Strict && rank != prefs.len() {
        return None;
    }
    Some(rank + bonus)
}

#[cfg(test)]
mod tests;
