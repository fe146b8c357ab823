//! One delta response in, one verdict out: every resource is decoded and converted first, and
//! the store changes only if all of them are good and the result is consistent. A response
//! is either applied whole or NACKed whole, so the data path never sees half a push, and the
//! last good state keeps serving after a bad one.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use nodetunnel_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload::Address;
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;

use crate::state::{Defaults, StateHandle, StoreDelta, StoreError};
use crate::xds::convert::{
    address_from_proto, authorization_from_proto, AddressResource, ProtoError,
};
use crate::xds::ResourceType;

/// How many bad resources a NACK lists by name; the rest are counted. Keeps the message (and
/// the log line) bounded when a whole 100k-resource push is bad.
const MAX_LISTED_PROBLEMS: usize = 20;

/// A response that was applied.
#[derive(Debug)]
pub(super) struct Applied {
    /// Resources added or replaced: (name, version).
    pub(super) updated: Vec<(String, String)>,
    /// Names removed (possibly including names we never had; the store ignores those).
    pub(super) removed: Vec<String>,
    /// Time spent waiting for and holding the store's write lock.
    pub(super) duration: Duration,
}

/// One resource the response got wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    /// The resource name, or `#<index>` when it has none.
    pub(super) name: String,
    pub(super) reason: String,
}

/// Why a response was NACKed; the text is what the control plane sees in `error_detail`.
#[derive(Debug, thiserror::Error)]
pub(super) enum Rejection {
    #[error(
        "unsupported type_url {type_url:?}: this client subscribes only to \
         {WORKLOAD_ADDRESS_TYPE_URL} and {AUTHORIZATION_TYPE_URL}"
    )]
    UnknownType { type_url: String },
    #[error("{}", describe_problems(*total, problems))]
    Invalid {
        total: usize,
        problems: Vec<Problem>,
    },
    #[error("nothing applied: the update conflicts with the current state: {0}")]
    Conflict(StoreError),
}

fn describe_problems(total: usize, problems: &[Problem]) -> String {
    let mut text = format!(
        "rejected {} of {total} resources, nothing applied: ",
        problems.len()
    );
    for (i, p) in problems.iter().take(MAX_LISTED_PROBLEMS).enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let _ = write!(text, "{:?}: {}", p.name, p.reason);
    }
    if problems.len() > MAX_LISTED_PROBLEMS {
        let _ = write!(text, "; and {} more", problems.len() - MAX_LISTED_PROBLEMS);
    }
    text
}

/// Validates `response` (of type `kind`) and applies it to `state` in one step.
pub(super) fn apply(
    kind: ResourceType,
    response: DeltaDiscoveryResponse,
    state: &StateHandle,
    defaults: &Defaults,
) -> Result<Applied, Rejection> {
    let total = response.resources.len();
    let mut problems = Vec::new();
    let mut delta = StoreDelta::default();
    let mut updated = Vec::with_capacity(total);
    let mut seen: HashSet<String> = HashSet::with_capacity(total);

    for (index, resource) in response.resources.into_iter().enumerate() {
        let name = if resource.name.is_empty() {
            format!("#{index}")
        } else {
            resource.name.clone()
        };
        if resource.name.is_empty() {
            problems.push(Problem {
                name,
                reason: "the resource has no name".into(),
            });
            continue;
        }
        if !seen.insert(name.clone()) {
            problems.push(Problem {
                name,
                reason: "the name appears more than once in this response".into(),
            });
            continue;
        }
        let version = resource.version.clone();
        match convert_guarded(kind, resource, defaults, &mut delta) {
            Ok(()) => updated.push((name, version)),
            Err(reason) => problems.push(Problem { name, reason }),
        }
    }

    let removed: Vec<String> = response
        .removed_resources
        .into_iter()
        .chain(response.removed_resource_names.into_iter().map(|r| r.name))
        .collect();
    for name in &removed {
        if name.is_empty() {
            problems.push(Problem {
                name: "(removed)".into(),
                reason: "a removed resource has no name".into(),
            });
        } else if seen.contains(name) {
            problems.push(Problem {
                name: name.clone(),
                reason: "the resource is both updated and removed in this response".into(),
            });
        }
    }

    if !problems.is_empty() {
        return Err(Rejection::Invalid { total, problems });
    }
    let removed: Vec<String> = removed.into_iter().filter(|n| !n.is_empty()).collect();
    match kind {
        ResourceType::Address => delta.removed_addresses = removed.clone(),
        ResourceType::Authorization => delta.removed_policies = removed.clone(),
    }

    let started = Instant::now();
    let result = state.write().apply(delta);
    let duration = started.elapsed();
    result.map_err(Rejection::Conflict)?;
    Ok(Applied {
        updated,
        removed,
        duration,
    })
}

/// [`convert`], with a panic in the conversion code turned into a rejection of that resource.
/// The conversion runs on input the control plane controls; should it ever hit a bug, the
/// push is NACKed and the client lives on, instead of the xDS task dying and the tunnel
/// silently never updating again. Unwinding cannot leave anything half-changed: the store is
/// not locked yet, and a rejected response's `delta` is thrown away.
fn convert_guarded(
    kind: ResourceType,
    resource: Resource,
    defaults: &Defaults,
    delta: &mut StoreDelta,
) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        convert(kind, resource, defaults, delta)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!(
            "converting it failed unexpectedly (a bug in nodetunnel): {what}"
        ))
    })
}

/// Decodes and converts one resource into `delta`; the error is a reason phrase (the caller
/// names the resource).
fn convert(
    kind: ResourceType,
    resource: Resource,
    defaults: &Defaults,
    delta: &mut StoreDelta,
) -> Result<(), String> {
    let Some(any) = resource.resource else {
        return Err("the resource has no body".into());
    };
    if any.type_url != kind.type_url() {
        return Err(format!(
            "its body is a {:?}, not the response's type {}",
            any.type_url,
            kind.type_url()
        ));
    }
    let name = resource.name.as_str();
    match kind {
        ResourceType::Address => {
            let msg = Address::decode(any.value.as_slice())
                .map_err(|e| format!("not a valid istio.workload.Address: {e}"))?;
            match address_from_proto(name, msg, defaults).map_err(reason)? {
                AddressResource::Workload(w) => delta.workloads.push(w),
                AddressResource::Service(s) => delta.services.push(s),
            }
        }
        ResourceType::Authorization => {
            let msg = Authorization::decode(any.value.as_slice())
                .map_err(|e| format!("not a valid istio.security.Authorization: {e}"))?;
            delta
                .policies
                .push(authorization_from_proto(name, msg).map_err(reason)?);
        }
    }
    Ok(())
}

/// The conversion error without the resource name it repeats.
fn reason(e: ProtoError) -> String {
    match e {
        ProtoError::Invalid { field, reason, .. } => format!("{field}: {reason}"),
    }
}

#[cfg(test)]
mod tests;
