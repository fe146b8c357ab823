//! The mesh as xDS resources: for each type URL, resource name → (version, encoded resource),
//! plus the identities present and the nodes running each (what the CA may issue, and to which
//! node's token), and the diff between what a client holds and the current mesh.
//!
//! A resource's version is a hash of its content, not a counter: a reconnecting tunnel reports
//! the versions it holds (`initial_resource_versions`), and a content hash lets the control
//! plane — even after its own restart — recognise what the tunnel already has and skip it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload::{address, Address};
use nodetunnel_proto::{AUTHORIZATION_TYPE_URL, WORKLOAD_ADDRESS_TYPE_URL};
use prost::Message;

use crate::encode::{policy_to_proto, service_to_proto, workload_to_proto};
use nodetunnel::identity::Identity;
use nodetunnel::state::Store;

#[cfg(test)]
mod tests;

pub use nodetunnel::xds::ResourceType;

/// A content hash of a resource (first 64 bits of SHA-256 over a canonical encoding); on the
/// wire, 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version(u64);

impl Version {
    /// Parses a version this control plane issued; anything else (another control plane's
    /// scheme, garbage) is `None` and simply means "send it again".
    pub fn parse(s: &str) -> Option<Version> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Version)
    }

    fn of(bytes: &[&[u8]]) -> Version {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for b in bytes {
            ctx.update(&(b.len() as u64).to_le_bytes());
            ctx.update(b);
        }
        let digest = ctx.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        Version(u64::from_be_bytes(first))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One resource as served: its version and the `Any` sent in `Resource.resource`.
#[derive(Debug, PartialEq)]
pub struct Versioned {
    pub version: Version,
    pub resource: prost_types::Any,
}

/// Resource name → resource, for one type. Names are `Arc<str>` so per-connection records of
/// what a client holds share them instead of copying 100,000 strings per tunnel.
pub type ResourceMap = HashMap<Arc<str>, Arc<Versioned>>;

/// One loaded mesh, immutable once built and shared by every connection.
#[derive(Debug, Default)]
pub struct Mesh {
    addresses: ResourceMap,
    authorizations: ResourceMap,
    /// Identity → the nodes its workloads are scheduled on (empty when none names a node).
    identities: HashMap<Identity, BTreeSet<String>>,
}

impl Mesh {
    /// Converts a loaded store: every workload (named by uid), service (`namespace/hostname`)
    /// and policy (`namespace/name`), and the identity of every workload.
    pub fn from_store(store: &Store) -> Mesh {
        let mut mesh = Mesh::default();
        for w in store.workloads() {
            mesh.insert_identity(w.identity(), &w.node);
            mesh.insert_address(w.uid.clone(), workload_to_proto(w));
        }
        for s in store.services() {
            mesh.insert_address(s.key().to_string(), service_to_proto(s));
        }
        for p in store.policies() {
            mesh.insert_authorization(p.key(), policy_to_proto(p));
        }
        mesh
    }

    /// Adds (or replaces) an `Address` resource named `name`.
    pub fn insert_address(&mut self, name: String, address: Address) {
        let version = address_version(&address);
        let resource = prost_types::Any {
            type_url: WORKLOAD_ADDRESS_TYPE_URL.to_string(),
            value: address.encode_to_vec(),
        };
        self.addresses
            .insert(name.into(), Arc::new(Versioned { version, resource }));
    }

    /// Adds (or replaces) an `Authorization` resource named `name`.
    pub fn insert_authorization(&mut self, name: String, policy: Authorization) {
        let value = policy.encode_to_vec();
        let version = Version::of(&[&value]);
        let resource = prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.to_string(),
            value,
        };
        self.authorizations
            .insert(name.into(), Arc::new(Versioned { version, resource }));
    }

    /// Marks `identity` as run by a workload on `node` (`""`: a workload that names no node,
    /// e.g. a VM's), so the CA may issue certificates for it to that node's token.
    pub fn insert_identity(&mut self, identity: Identity, node: &str) {
        let nodes = self.identities.entry(identity).or_default();
        if !node.is_empty() {
            nodes.insert(node.to_string());
        }
    }

    pub fn resources(&self, ty: ResourceType) -> &ResourceMap {
        match ty {
            ResourceType::Address => &self.addresses,
            ResourceType::Authorization => &self.authorizations,
        }
    }

    /// Whether some workload in the mesh runs as `identity`.
    pub fn has_identity(&self, identity: &Identity) -> bool {
        self.identities.contains_key(identity)
    }

    /// The nodes whose workloads run as `identity`; `None` when no workload does (the CA's
    /// placement check).
    pub fn nodes_running(&self, identity: &Identity) -> Option<&BTreeSet<String>> {
        self.identities.get(identity)
    }

    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }
}

/// `Address` holds a protobuf map (`Workload.services`), which prost encodes in `HashMap`
/// iteration order — different on every load. The version must not depend on that, so the map
/// entries are hashed separately in key order, and repeated port lists (which the store also
/// keeps in maps) are sorted first.
fn address_version(address: &Address) -> Version {
    let mut canonical = address.clone();
    let mut entries = BTreeMap::new();
    match &mut canonical.r#type {
        Some(address::Type::Workload(w)) => {
            for (key, mut ports) in std::mem::take(&mut w.services) {
                ports.ports.sort_by_key(|p| (p.service_port, p.target_port));
                entries.insert(key, ports.encode_to_vec());
            }
        }
        Some(address::Type::Service(s)) => {
            s.ports.sort_by_key(|p| (p.service_port, p.target_port));
        }
        None => {}
    }
    let body = canonical.encode_to_vec();
    let mut parts: Vec<&[u8]> = vec![&body];
    for (key, ports) in &entries {
        parts.push(key.as_bytes());
        parts.push(ports);
    }
    Version::of(&parts)
}

/// What a client holds of one type: name → the version we sent (or it reported). `None` is a
/// version we cannot interpret (reported by the client on reconnect): the resource is sent again.
pub type Held = HashMap<Arc<str>, Option<Version>>;

/// What to send a client so it matches the mesh.
#[derive(Debug, Default)]
pub struct Diff {
    /// New or changed resources, sorted by name (stable pushes make logs and tests readable).
    pub changed: Vec<(Arc<str>, Arc<Versioned>)>,
    /// Names the client holds that the mesh no longer has, sorted.
    pub removed: Vec<Arc<str>>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares what a client holds with `current`, restricted to the names `wanted` accepts (all
/// names for a wildcard subscription). Unchanged versions are not resent.
pub fn diff(held: &Held, current: &ResourceMap, wanted: impl Fn(&str) -> bool) -> Diff {
    let mut changed: Vec<_> = current
        .iter()
        .filter(|(name, res)| {
            wanted(name) && held.get(*name).copied().flatten() != Some(res.version)
        })
        .map(|(name, res)| (name.clone(), res.clone()))
        .collect();
    let mut removed: Vec<_> = held
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    removed.sort();
    Diff { changed, removed }
}

/// Records that the client now holds what `diff` sent.
pub fn apply(held: &mut Held, diff: &Diff) {
    for (name, res) in &diff.changed {
        held.insert(name.clone(), Some(res.version));
    }
    for name in &diff.removed {
        held.remove(name);
    }
}
