//! Indexed storage of workloads, services and authorization policies.
//!
//! Service endpoints are derived from each workload's `services` map rather than stored
//! separately, so a workload update can never leave a stale endpoint behind.
//!
//! Nothing a control plane sends can conflict here, because istiod really sends all of it:
//! several workloads on one address (every host-network pod carries its node's IP; a new pod
//! can arrive before the old pod with the same IP is removed) and one VIP shared by services
//! in several namespaces (ServiceEntry). The store keeps every claimant, releases an address
//! only when its last claimant goes, and resolution picks among them as ztunnel does.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::types::{
    NamespacedHostname, NetworkAddress, NetworkCidr, Policy, PolicyScope, Service, Workload,
};

/// One xDS response's worth of changes, applied by [`Store::apply`].
#[derive(Default, Debug)]
pub struct StoreDelta {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    /// Removed `istio.workload.Address` resource names: a workload uid or a service's
    /// `namespace/hostname`. Unknown names are ignored.
    pub removed_addresses: Vec<String>,
    /// Removed `istio.security.Authorization` resource names (`namespace/name`).
    pub removed_policies: Vec<String>,
}

impl StoreDelta {
    /// True when applying the delta would change nothing.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.workloads.is_empty()
            && self.services.is_empty()
            && self.policies.is_empty()
            && self.removed_addresses.is_empty()
            && self.removed_policies.is_empty()
    }
}

/// Equality compares every index, not just the primary maps, so tests can assert that a
/// rolled-back store is exactly what it was.
#[derive(Default, Debug, PartialEq)]
pub struct Store {
    workloads: HashMap<String, Arc<Workload>>,
    /// Every workload claiming each address, in arrival order (see [`Store::workload_by_ip`]).
    workload_by_ip: HashMap<NetworkAddress, Vec<Arc<Workload>>>,
    services: HashMap<NamespacedHostname, Arc<Service>>,
    /// Every service claiming each VIP, in arrival order (see [`Store::service_by_vip`]).
    service_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>>,
    /// Every (range, service) of the services' CIDR VIPs, in arrival order; searched only
    /// when no exact VIP matches (see [`Store::service_by_vip`]).
    service_by_cidr: Vec<(NetworkCidr, Arc<Service>)>,
    services_by_host: HashMap<String, BTreeSet<NamespacedHostname>>,
    /// Service key → uids of the workloads that name it in their `services` map.
    endpoints: HashMap<NamespacedHostname, BTreeSet<String>>,
    /// Policy key (`namespace/name`) → policy.
    policies: HashMap<String, Arc<Policy>>,
    /// Keys of the GLOBAL-scope policies, in key order.
    global_policies: BTreeSet<String>,
    /// Namespace → keys of its NAMESPACE-scope policies, in key order.
    namespace_policies: HashMap<String, BTreeSet<String>>,
}

/// One policy that applies to a workload, as [`Store::for_each_policy`] visits it.
#[derive(Clone, Copy, Debug)]
pub enum Applicable<'a> {
    /// The policy, and the scope that makes it apply.
    Found(PolicyScope, &'a Arc<Policy>),
    /// A key the workload lists that the store does not hold (in flight, or removed).
    Missing(&'a str),
}

/// The policies that apply to one workload, as [`Store::policies_for`] finds them.
#[derive(Debug, Default)]
pub struct ApplicablePolicies {
    /// Each applicable policy once, with why it applies, in visiting order.
    pub policies: Vec<(PolicyScope, Arc<Policy>)>,
    /// Keys the workload lists that the store does not hold (in flight, or removed).
    pub missing: Vec<String>,
}

impl Store {
    /// Inserts or replaces a workload (keyed by uid), returning the one it replaced. Its
    /// addresses may be claimed by other workloads too.
    pub(crate) fn insert_workload(&mut self, mut workload: Workload) -> Option<Arc<Workload>> {
        // Listed once each, first mention kept: deduplicating here, once per update, keeps
        // `for_each_policy` (every inbound connection) linear in the number of policies.
        let mut seen = std::collections::HashSet::new();
        workload
            .authorization_policies
            .retain(|key| seen.insert(key.clone()));
        let previous = self.remove_workload(&workload.uid);
        self.index_workload(Arc::new(workload));
        previous
    }

    /// Adds a workload whose uid is absent.
    fn index_workload(&mut self, workload: Arc<Workload>) {
        for ip in workload
            .workload_ips
            .iter()
            .filter(|_| !workload.host_network)
        {
            let claimants = self
                .workload_by_ip
                .entry(NetworkAddress::new(workload.network.clone(), *ip))
                .or_default();
            // A workload listing one address twice claims it once.
            if !claimants.iter().any(|w| w.uid == workload.uid) {
                claimants.push(workload.clone());
            }
        }
        for key in workload.services.keys() {
            self.endpoints
                .entry(key.clone())
                .or_default()
                .insert(workload.uid.clone());
        }
        self.workloads.insert(workload.uid.clone(), workload);
    }

    pub(crate) fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let old = self.workloads.remove(uid)?;
        for ip in old.workload_ips.iter().filter(|_| !old.host_network) {
            let address = NetworkAddress::new(old.network.clone(), *ip);
            if let Some(claimants) = self.workload_by_ip.get_mut(&address) {
                claimants.retain(|w| w.uid != uid);
                if claimants.is_empty() {
                    self.workload_by_ip.remove(&address);
                }
            }
        }
        for key in old.services.keys() {
            if let Some(uids) = self.endpoints.get_mut(key) {
                uids.remove(uid);
                if uids.is_empty() {
                    self.endpoints.remove(key);
                }
            }
        }
        Some(old)
    }

    /// Inserts or replaces a service (keyed by namespace/hostname), returning the one it
    /// replaced. Its VIPs may be shared with services of other namespaces.
    pub(crate) fn insert_service(&mut self, service: Service) -> Option<Arc<Service>> {
        let previous = self.remove_service(&service.key());
        self.index_service(Arc::new(service));
        previous
    }

    /// Adds a service whose key is absent.
    fn index_service(&mut self, service: Arc<Service>) {
        let key = service.key();
        for vip in &service.vips {
            let claimants = self.service_by_vip.entry(vip.clone()).or_default();
            if !claimants.iter().any(|s| s.key() == key) {
                claimants.push(service.clone());
            }
        }
        for cidr in &service.cidr_vips {
            self.service_by_cidr.push((cidr.clone(), service.clone()));
        }
        self.services_by_host
            .entry(service.hostname.clone())
            .or_default()
            .insert(key.clone());
        self.services.insert(key, service);
    }

    pub(crate) fn remove_service(&mut self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        let old = self.services.remove(key)?;
        for vip in &old.vips {
            if let Some(claimants) = self.service_by_vip.get_mut(vip) {
                claimants.retain(|s| s.namespace != key.namespace || s.hostname != key.hostname);
                if claimants.is_empty() {
                    self.service_by_vip.remove(vip);
                }
            }
        }
        if !old.cidr_vips.is_empty() {
            self.service_by_cidr.retain(|(_, s)| s.key() != *key);
        }
        if let Some(keys) = self.services_by_host.get_mut(&old.hostname) {
            keys.remove(key);
            if keys.is_empty() {
                self.services_by_host.remove(&old.hostname);
            }
        }
        Some(old)
    }

    /// Inserts or replaces a policy (keyed by `namespace/name`), returning the one replaced.
    /// Policies never conflict with each other.
    pub(crate) fn insert_policy(&mut self, policy: Policy) -> Option<Arc<Policy>> {
        self.index_policy(Arc::new(policy))
    }

    fn index_policy(&mut self, policy: Arc<Policy>) -> Option<Arc<Policy>> {
        let key = policy.key();
        let previous = self.remove_policy(&key);
        match policy.scope {
            PolicyScope::Global => {
                self.global_policies.insert(key.clone());
            }
            PolicyScope::Namespace => {
                self.namespace_policies
                    .entry(policy.namespace.clone())
                    .or_default()
                    .insert(key.clone());
            }
            // Applies to the workloads that list it; nothing to index.
            PolicyScope::WorkloadSelector => {}
        }
        self.policies.insert(key, policy);
        previous
    }

    pub(crate) fn remove_policy(&mut self, key: &str) -> Option<Arc<Policy>> {
        let old = self.policies.remove(key)?;
        match old.scope {
            PolicyScope::Global => {
                self.global_policies.remove(key);
            }
            PolicyScope::Namespace => {
                if let Some(keys) = self.namespace_policies.get_mut(&old.namespace) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.namespace_policies.remove(&old.namespace);
                    }
                }
            }
            PolicyScope::WorkloadSelector => {}
        }
        Some(old)
    }

    /// The policies that apply to `workload`, collected (see [`Store::for_each_policy`]).
    pub fn policies_for(&self, workload: &Workload) -> ApplicablePolicies {
        let mut found = ApplicablePolicies::default();
        self.for_each_policy(workload, |applicable| {
            match applicable {
                Applicable::Found(scope, policy) => {
                    found.policies.push((scope, Arc::clone(policy)))
                }
                Applicable::Missing(key) => found.missing.push(key.to_string()),
            }
            ControlFlow::<()>::Continue(())
        });
        found
    }

    /// Calls `visit` with each policy that applies to `workload`, until it breaks: every
    /// GLOBAL one, then the NAMESPACE ones of its namespace, then the WORKLOAD_SELECTOR ones
    /// it lists, each group in key order. A listed key is used only when it names a
    /// WORKLOAD_SELECTOR policy (a namespace or global policy listed by name already applies
    /// by its scope, and must not be visited twice); a listed key the store lacks is visited
    /// as [`Applicable::Missing`]. Allocates nothing: this is on every inbound connection.
    /// `workload` is expected to come from this store, whose workloads list each key once.
    pub fn for_each_policy<'a, B>(
        &'a self,
        workload: &'a Workload,
        mut visit: impl FnMut(Applicable<'a>) -> ControlFlow<B>,
    ) -> Option<B> {
        let scoped = self
            .global_policies
            .iter()
            .map(|k| (PolicyScope::Global, k))
            .chain(
                self.namespace_policies
                    .get(&workload.namespace)
                    .into_iter()
                    .flatten()
                    .map(|k| (PolicyScope::Namespace, k)),
            );
        for (scope, key) in scoped {
            if let Some(policy) = self.policies.get(key) {
                if let ControlFlow::Break(b) = visit(Applicable::Found(scope, policy)) {
                    return Some(b);
                }
            }
        }
        // Stored workloads list each key once (see `insert_workload`).
        for key in &workload.authorization_policies {
            let applicable = match self.policies.get(key.as_str()) {
                Some(policy) if policy.scope == PolicyScope::WorkloadSelector => {
                    Applicable::Found(PolicyScope::WorkloadSelector, policy)
                }
                Some(_) => continue,
                None => Applicable::Missing(key),
            };
            if let ControlFlow::Break(b) = visit(applicable) {
                return Some(b);
            }
        }
        None
    }

    /// The policy named `key` (`namespace/name`).
    pub(crate) fn policy(&self, key: &str) -> Option<Arc<Policy>> {
        self.policies.get(key).cloned()
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    /// The workload an address resolves to, for routing and for naming a peer: when several
    /// claim it, the one ztunnel picks — a pod before any other kind (pods are the hardest to
    /// spoof and the likeliest to be what is really behind the address), then one behind a
    /// tunnel (HBONE), then the earliest to arrive. Never use this to decide which *local*
    /// workload (and so which identity) a connection belongs to: see
    /// [`Store::workloads_at`].
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        preferred_claimant(self.workloads_at(network, ip).iter()).cloned()
    }

    /// Every workload claiming `ip` on `network`, in arrival order.
    pub fn workloads_at(&self, network: &str, ip: IpAddr) -> &[Arc<Workload>] {
        self.workload_by_ip
            .get(&NetworkAddress::new(network, ip))
            .map_or(&[], Vec::as_slice)
    }

    /// The service a client in `client_namespace` reaches at VIP `ip` on `network`, chosen as
    /// ztunnel chooses. An exact VIP wins over any CIDR VIP; among the services sharing an
    /// exact VIP, the one in the client's namespace, then one marked canonical, then the
    /// earliest to arrive. Among CIDR VIPs containing `ip`: the client's namespace first, then
    /// the longest prefix, then canonical (so a broad range of the client's own namespace beats
    /// a narrower one elsewhere).
    pub(crate) fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        client_namespace: Option<&str>,
    ) -> Option<Arc<Service>> {
        if let Some(claimants) = self.service_by_vip.get(&NetworkAddress::new(network, ip)) {
            if let Some(best) = preferred_service(claimants.iter(), client_namespace) {
                return Some(best.clone());
            }
        }
        self.service_by_cidr
            .iter()
            .filter(|(range, _)| range.network == network && range.cidr.contains(&ip))
            .map(|(range, service)| {
                let in_namespace = client_namespace.is_some_and(|ns| service.namespace == ns);
                (
                    (in_namespace, range.cidr.prefix_len(), service.canonical),
                    service,
                )
            })
            // The first of equal ranks wins: max_by_key would keep the last.
            .fold(
                None,
                |best: Option<(_, &Arc<Service>)>, (rank, service)| match best {
                    Some((best_rank, _)) if best_rank >= rank => best,
                    _ => Some((rank, service)),
                },
            )
            .map(|(_, service)| service.clone())
    }

    pub fn service(&self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }

    /// The service named `hostname` for a client in `namespace`: when several namespaces
    /// define the hostname (ServiceEntry), the one in `namespace`, then one marked canonical,
    /// then the first by key (ztunnel's preference).
    pub(crate) fn service_by_hostname(
        &self,
        hostname: &str,
        namespace: &str,
    ) -> Option<Arc<Service>> {
        let keys = self.services_by_host.get(hostname)?;
        preferred_service(
            keys.iter().filter_map(|k| self.services.get(k)),
            Some(namespace),
        )
        .cloned()
    }

    #[cfg(test)]
    pub(crate) fn services_by_hostname(&self, hostname: &str) -> Vec<Arc<Service>> {
        self.services_by_host
            .get(hostname)
            .into_iter()
            .flatten()
            .filter_map(|key| self.services.get(key).cloned())
            .collect()
    }

    /// Workloads backing a service, in a stable (uid) order.
    pub fn endpoints(&self, key: &NamespacedHostname) -> Vec<Arc<Workload>> {
        self.endpoints
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.workloads.get(uid).cloned())
            .collect()
    }

    /// All workloads, in no particular order; `.len()` is O(1).
    pub fn workloads(&self) -> impl ExactSizeIterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, in no particular order; `.len()` is O(1).
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// All policies, in no particular order; `.len()` is O(1).
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// Applies `delta`: removals first, then services, workloads and policies (services
    /// before workloads so a workload may name a service added in the same delta). Within
    /// the delta, the order of entries does not matter, except that the last of two entries
    /// with the same key wins. Nothing in a delta can conflict with the store (see the module
    /// docs), so every change is made.
    pub fn apply(&mut self, delta: StoreDelta) {
        for name in &delta.removed_addresses {
            self.remove_address(name);
        }
        for key in &delta.removed_policies {
            self.remove_policy(key);
        }
        for service in delta.services {
            self.insert_service(service);
        }
        for workload in delta.workloads {
            self.insert_workload(workload);
        }
        for policy in delta.policies {
            self.index_policy(Arc::new(policy));
        }
    }

    /// Removes the Address resource `name`: the workload with that uid if there is one,
    /// else the service whose `namespace/hostname` it is. Unknown names are ignored, as xDS
    /// may repeat a removal.
    fn remove_address(&mut self, name: &str) {
        if self.remove_workload(name).is_none() {
            if let Ok(key) = name.parse::<NamespacedHostname>() {
                self.remove_service(&key);
            }
        }
    }
}

/// ztunnel's choice among services sharing a VIP or hostname: the client's namespace, then
/// the first marked canonical, then the first.
fn preferred_service<'a>(
    mut services: impl Iterator<Item = &'a Arc<Service>>,
    client_namespace: Option<&str>,
) -> Option<&'a Arc<Service>> {
    let mut first = None;
    let mut canonical = None;
    for service in services.by_ref() {
        if client_namespace.is_some_and(|ns| service.namespace == ns) {
            return Some(service);
        }
        if service.canonical && canonical.is_none() {
            canonical = Some(service);
        }
        first.get_or_insert(service);
    }
    canonical.or(first)
}

/// Among workloads claiming one address, the one ztunnel resolves it to (see
/// [`Store::workload_by_ip`]).
pub fn preferred_claimant<'a>(
    claimants: impl Iterator<Item = &'a Arc<Workload>>,
) -> Option<&'a Arc<Workload>> {
    let mut best: Option<(u8, &Arc<Workload>)> = None;
    for w in claimants {
        let rank = u8::from(w.uid.contains("//Pod/")) * 2
            + u8::from(w.protocol == super::types::InboundProtocol::Hbone);
        // Strictly greater: the earliest of equal rank wins.
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, w));
        }
    }
    best.map(|(_, w)| w)
}

/// Shared handle to the store: many readers on the data path, rare writers (config updates).
/// Readers hold the lock only for a lookup, never across an await.
///
/// Every write is announced on a change signal once its lock is released ([`changes`]), so
/// whatever decided on an earlier snapshot (live connections authorized under older policies)
/// can decide again on the new one. A write guard announces itself when dropped, so no writer
/// can forget to.
///
/// [`changes`]: StateHandle::changes
#[derive(Clone, Debug)]
pub struct StateHandle {
    store: Arc<RwLock<Store>>,
    /// How many writes have finished; subscribers wake on each bump (coalesced if they lag).
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for StateHandle {
    fn default() -> StateHandle {
        StateHandle::new(Store::default())
    }
}

impl StateHandle {
    pub fn new(store: Store) -> StateHandle {
        StateHandle {
            store: Arc::new(RwLock::new(store)),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping the data path would, so poisoning is ignored.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The store for writing. Dropping the guard releases the lock and then announces the
    /// write on [`changes`](Self::changes), even when the writer ends up changing nothing (a
    /// rejected delta is undone): a spurious wake-up costs one re-check, a missed one a stale
    /// decision.
    pub fn write(&self) -> StateWriteGuard<'_> {
        StateWriteGuard {
            guard: Some(self.store.write().unwrap_or_else(|e| e.into_inner())),
            generation: &self.generation,
        }
    }

    /// Replaces the whole store at once (a reloaded config file).
    pub(crate) fn replace(&self, store: Store) {
        *self.write() = store;
    }

    /// A signal that changes after every write to the store, observed after the write's lock
    /// is released: a reader that sees the change and then reads the store sees that write.
    /// Its value is the number of writes so far.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Write access to the store; announces the write when dropped (see [`StateHandle::write`]).
pub struct StateWriteGuard<'a> {
    /// `Some` until dropped.
    guard: Option<RwLockWriteGuard<'a, Store>>,
    generation: &'a tokio::sync::watch::Sender<u64>,
}

impl std::ops::Deref for StateWriteGuard<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.guard.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for StateWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        self.guard.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for StateWriteGuard<'_> {
    fn drop(&mut self) {
        // Release first: a subscriber woken by the bump must be able to read the new store.
        drop(self.guard.take());
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod handle_tests;
