//! One delta response in, one verdict out: every resource is decoded and converted first (off
//! the lock), then the good ones are applied in one write. A bad resource refuses only itself,
//! as in ztunnel: the push is applied without it and NACKed naming it and why, and whatever
//! version of it we had before keeps serving. Refusing the whole push instead would let one
//! malformed resource (or one istiod bug) freeze every other update on the node, which in a
//! real cluster means stale endpoints and a tunnel that never becomes ready.
//!
//! A resource using an enum value this version does not know (a newer istiod) is not bad: it
//! is skipped with a warning naming it, and the push is ACKed.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use nodetunnel_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload::Address;
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;

use crate::state::{Defaults, StateHandle, StoreDelta};
use crate::xds::convert::{
    address_from_proto, authorization_from_proto, AddressResource, ProtoError,
};
use crate::xds::ResourceType;

/// How many bad resources a NACK lists by name; the rest are counted. Keeps the message (and
/// the log line) bounded when a whole 100k-resource push is bad.
const MAX_LISTED_PROBLEMS: usize = 20;

/// What a response changed, and what it got wrong.
#[derive(Debug)]
pub(crate) struct Applied {
    /// Resources added or replaced: (name, version).
    pub(crate) updated: Vec<(String, String)>,
    /// Names removed (possibly including names we never had; the store ignores those).
    pub(crate) removed: Vec<String>,
    /// Resources skipped because this version does not understand them (logged as warnings;
    /// the push is still ACKed).
    pub(super) ignored: Vec<Problem>,
    /// Why the response is NACKed, when some of its resources were refused; the rest is
    /// applied all the same.
    pub(super) rejection: Option<Rejection>,
    /// Time spent waiting for and holding the store's write lock.
    pub(crate) duration: Duration,
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
}

fn describe_problems(total: usize, problems: &[Problem]) -> String {
    let mut text = format!(
        "rejected {} of {total} resources (the others were applied): ",
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

/// Validates `response` (of type `kind`) and applies its good resources to `state` in one
/// write; the bad ones are listed in [`Applied::rejection`].
pub(crate) fn apply(
    kind: ResourceType,
    response: DeltaDiscoveryResponse,
    state: &StateHandle,
    defaults: &Defaults,
) -> Applied {
    let total = response.resources.len();
    let mut problems = Vec::new();
    let mut ignored = Vec::new();
    let mut delta = StoreDelta::default();
    let mut updated = Vec::with_capacity(total);

    // A name both updated and removed is ambiguous: neither happens.
    let mut removed_names: HashSet<String> = HashSet::new();
    let mut removed = Vec::new();
    for name in response
        .removed_resources
        .into_iter()
        .chain(response.removed_resource_names.into_iter().map(|r| r.name))
    {
        if name.is_empty() {
            problems.push(Problem {
                name: "(removed)".into(),
                reason: "a removed resource has no name".into(),
            });
        } else if removed_names.insert(name.clone()) {
            removed.push(name);
        }
    }
    let mut seen: HashSet<String> = HashSet::with_capacity(total);
    let mut both = HashSet::new();
    for (index, resource) in response.resources.into_iter().enumerate() {
        if resource.name.is_empty() {
            problems.push(Problem {
                name: format!("#{index}"),
                reason: "the resource has no name".into(),
            });
            continue;
        }
        let name = resource.name.clone();
        if !seen.insert(name.clone()) {
            problems.push(Problem {
                name,
                reason: "the name appears more than once in this response".into(),
            });
            continue;
        }
        if removed_names.contains(&name) {
            problems.push(Problem {
                name: name.clone(),
                reason: "the resource is both updated and removed in this response".into(),
            });
            both.insert(name);
            continue;
        }
        let version = resource.version.clone();
        match convert_guarded(kind, resource, defaults, &mut delta) {
            Ok(()) => updated.push((name, version)),
            Err(Refused::Invalid(reason)) => problems.push(Problem { name, reason }),
            Err(Refused::Unsupported(reason)) => {
                tracing::warn!(kind = kind.label(), resource = %name, "xDS resource ignored: {reason}");
                ignored.push(Problem { name, reason });
            }
        }
    }
    // A name appearing twice among the updates is refused whole: drop what was converted.
    let duplicated: HashSet<&String> = problems
        .iter()
        .filter(|p| seen.contains(&p.name) && !both.contains(&p.name))
        .map(|p| &p.name)
        .collect();
    if !duplicated.is_empty() {
        updated.retain(|(name, _)| !duplicated.contains(name));
        delta.workloads.retain(|w| !duplicated.contains(&w.uid));
        delta
            .services
            .retain(|s| !duplicated.contains(&s.key().to_string()));
        delta.policies.retain(|p| !duplicated.contains(&p.key()));
    }
    removed.retain(|name| !both.contains(name));
    match kind {
        ResourceType::Address => delta.removed_addresses = removed.clone(),
        ResourceType::Authorization => delta.removed_policies = removed.clone(),
    }

    let started = Instant::now();
    state.write().apply(delta);
    let duration = started.elapsed();
    let rejection = (!problems.is_empty()).then_some(Rejection::Invalid { total, problems });
    Applied {
        updated,
        removed,
        ignored,
        rejection,
        duration,
    }
}

/// Why one resource was not applied.
#[derive(Debug)]
pub(crate) enum Refused {
    /// It is wrong: NACKed.
    Invalid(String),
    /// It uses something this version does not know: skipped with a warning, ACKed.
    Unsupported(String),
}

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused::Invalid(reason)
    }
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
) -> Result<(), Refused> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        convert(kind, resource, defaults, delta)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Refused::Invalid(format!(
            "converting it failed unexpectedly (a bug in nodetunnel): {what}"
        )))
    })
}

/// Decodes and converts one resource into `delta`; the error is a reason phrase (the caller
/// names the resource).
pub(crate) fn convert(
    kind: ResourceType,
    resource: Resource,
    defaults: &Defaults,
    delta: &mut StoreDelta,
) -> Result<(), Refused> {
    let Some(any) = resource.resource else {
        return Err(Refused::Invalid("the resource has no body".into()));
    };
    if any.type_url != kind.type_url() {
        return Err(Refused::Invalid(format!(
            "its body is a {:?}, not the response's type {}",
            any.type_url,
            kind.type_url()
        )));
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
fn reason(e: ProtoError) -> Refused {
    match e {
        ProtoError::Invalid { field, reason, .. } => Refused::Invalid(format!("{field}: {reason}")),
        ProtoError::Unsupported { field, reason, .. } => {
            Refused::Unsupported(format!("{field}: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests;
