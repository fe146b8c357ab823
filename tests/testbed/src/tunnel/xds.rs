//! What a tunnel holds from the control plane, read from `/config_dump`'s `xds` section, and
//! waiting for a push to be applied and ACKed — so a test changes the mesh and knows the
//! change arrived whole before it sends traffic.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Tunnel;
use crate::error::{Error, Result};
use crate::eventually::wait_until;

/// The type URL of workloads and services.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// The type URL of authorization policies.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// One xDS type as the tunnel holds it (`xds.types[<type URL>]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdsTypeState {
    /// Responses applied whole and ACKed.
    pub acks: u64,
    /// Responses NACKed (some resource refused).
    pub nacks: u64,
    /// Resources skipped without a NACK (values this version does not know).
    pub ignored: u64,
    /// Resource name → the version accepted.
    pub versions: BTreeMap<String, String>,
    pub last_nack: Option<String>,
}

impl XdsTypeState {
    /// Whether, compared with `before`, a push was ACKed and none NACKed or skipped, every
    /// name in `changed` has a version it did not have before, and none in `removed` is held.
    pub fn acked_push(&self, before: &XdsTypeState, changed: &[&str], removed: &[&str]) -> bool {
        self.acks > before.acks
            && self.nacks == before.nacks
            && self.ignored == before.ignored
            && changed.iter().all(|name| {
                let now = self.versions.get(*name);
                now.is_some() && now != before.versions.get(*name)
            })
            && removed
                .iter()
                .all(|name| !self.versions.contains_key(*name))
    }
}

impl Tunnel {
    /// The tunnel's state of `type_url` (e.g. [`ADDRESS_TYPE_URL`]).
    pub fn xds_type(&self, type_url: &str) -> Result<XdsTypeState> {
        let dump = self.config_dump()?;
        let t = &dump["xds"]["types"][type_url];
        if !t.is_object() {
            return Err(Error::Invalid(format!(
                "/config_dump has no xds.types[{type_url:?}]: {:.300}",
                dump["xds"]
            )));
        }
        let count = |key: &str| t[key].as_u64().unwrap_or(0);
        let versions = t["versions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, v)| (name.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        Ok(XdsTypeState {
            acks: count("acks"),
            nacks: count("nacks"),
            ignored: count("ignored"),
            versions,
            last_nack: t["last_nack"].as_str().map(str::to_string),
        })
    }

    /// Waits until the tunnel has ACKed a push of `type_url` that, compared with `before`,
    /// brought new versions of `changed` and removed `removed` (see
    /// [`XdsTypeState::acked_push`]). Panics with what it holds, and any NACK, otherwise.
    pub fn wait_push_acked(
        &self,
        type_url: &str,
        before: &XdsTypeState,
        changed: &[&str],
        removed: &[&str],
        deadline: Duration,
    ) {
        let mut last = None;
        let done = wait_until(deadline, || {
            let now = self.xds_type(type_url);
            let ok = now
                .as_ref()
                .is_ok_and(|now| now.acked_push(before, changed, removed));
            last = Some(now);
            ok
        });
        if !done {
            panic!(
                "no ACKed push of {type_url} changing {changed:?} and removing {removed:?} \
                 within {deadline:?}; before: {before:?}; now: {last:?}; log tail:\n{}",
                self.log_tail(20)
            );
        }
    }
}
