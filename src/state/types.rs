//! The tunnel's in-memory model of the mesh: workloads and services, as the control plane
//! describes them (Istio's `istio.workload` API), reduced to what the data path needs.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::identity::Identity;

/// How a workload expects to receive traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InboundProtocol {
    /// Plain TCP: no tunnel in front of it; peers connect directly.
    #[default]
    Tcp,
    /// A node tunnel terminates HBONE (port 15008) in front of it.
    Hbone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// An IP address qualified by the network it lives on (`network/ip` in config).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl NetworkAddress {
    pub fn new(network: impl Into<String>, address: IpAddr) -> NetworkAddress {
        NetworkAddress {
            network: network.into(),
            address,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl FromStr for NetworkAddress {
    type Err = String;

    /// Accepts `network/ip`, `/ip` (default network) and a bare `ip`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = match s.rsplit_once('/') {
            Some((network, ip)) => (network, ip),
            None => ("", s),
        };
        let address = ip
            .parse()
            .map_err(|_| format!("{s:?} is not <network>/<ip>: {ip:?} is not an IP address"))?;
        Ok(NetworkAddress::new(network, address))
    }
}

/// A range of addresses on one network (`network/ip/len` in config): a CIDR VIP, which a
/// service answers on for every address inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkCidr {
    pub network: String,
    pub cidr: IpNet,
}

impl fmt::Display for NetworkCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.cidr)
    }
}

/// The address families a service's clients are sent over (Istio's `IPFamilies`): an endpoint
/// address outside them is never chosen. `None` on a service (AUTOMATIC) means "whatever the
/// addresses are".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
    Dual,
}

impl IpFamily {
    pub fn accepts(self, ip: IpAddr) -> bool {
        match self {
            IpFamily::V4 => ip.is_ipv4(),
            IpFamily::V6 => ip.is_ipv6(),
            IpFamily::Dual => true,
        }
    }
}

/// A service's key: Istio keys services by namespace and hostname.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl FromStr for NamespacedHostname {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Ok(NamespacedHostname {
                    namespace: ns.to_string(),
                    hostname: host.to_string(),
                })
            }
            _ => Err(format!("{s:?} is not <namespace>/<hostname>")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: InboundProtocol,
    pub node: String,
    pub network: String,
    pub cluster_id: String,
    pub hostname: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: String,
    pub status: HealthStatus,
    /// Services this workload backs, with its own service-port → target-port overrides.
    pub services: HashMap<NamespacedHostname, HashMap<u16, u16>>,
    /// Keys (`namespace/name`) of the workload-selector policies that select this workload.
    /// Namespace and global policies are not listed: they apply by their scope.
    pub authorization_policies: Vec<String>,
    /// A host-network pod (`network_mode: HOST_NETWORK`): its addresses are its node's, shared
    /// with every other host-network pod there, so they identify nothing. As in ztunnel, the
    /// store does not index such a workload by address (it is found by uid and as a service
    /// endpoint only).
    pub host_network: bool,
    /// Where the workload runs; compared with the client's by [`LoadBalancing`] preferences.
    pub locality: Locality,
    /// Relative weight among a service's endpoints (ztunnel reads an unset value as 1; 0 is
    /// never picked).
    pub capacity: u32,
    /// The waypoint (L7 proxy) this workload's traffic must pass through, when addressed to
    /// the workload directly; its own tunnel refuses traffic that did not come from it.
    pub waypoint: Option<GatewayAddress>,
    /// The east-west gateway a client on another network reaches this workload through
    /// (double HBONE, `crate::state::network_gateway`); `None` for a workload reachable only
    /// from its own network.
    pub network_gateway: Option<GatewayAddress>,
}

/// The capacity of a workload whose `capacity` is unset, as ztunnel reads it.
pub const DEFAULT_CAPACITY: u32 = 1;

/// A workload's failure domain (Istio's `Locality`); empty parts compare equal to each other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(
            self.trust_domain.clone(),
            self.namespace.clone(),
            self.service_account.clone(),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// Single addresses the service answers on; empty for a service reached by hostname only
    /// (headless, or a ServiceEntry with DNS resolution and no address).
    pub vips: Vec<NetworkAddress>,
    /// Address ranges it answers on; an exact VIP of any service wins over a range.
    pub cidr_vips: Vec<NetworkCidr>,
    /// Service port → default target port (0 = same as the service port).
    pub ports: HashMap<u16, u16>,
    /// Identities a client accepts from any endpoint of this service, besides the endpoint's own.
    pub subject_alt_names: Vec<String>,
    /// How endpoints are chosen; `None` spreads over all healthy endpoints by capacity.
    pub load_balancing: Option<LoadBalancing>,
    /// Which endpoint address families may be used (`None`: AUTOMATIC, any).
    pub ip_families: Option<IpFamily>,
    /// Preferred over same-keyed services of other namespaces when none is in the client's
    /// namespace (for a shared VIP, CIDR or hostname).
    pub canonical: bool,
    /// The waypoint that traffic to this service's VIPs is sent to instead of an endpoint.
    pub waypoint: Option<GatewayAddress>,
}

/// Where a waypoint (or gateway) is reached (Istio's `GatewayAddress`): an address, or the
/// hostname of a service whose endpoints are the waypoint's workloads, plus the port of its
/// mTLS HBONE listener.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

/// The HBONE port of a gateway address that does not give one (istiod always does).
pub const DEFAULT_GATEWAY_HBONE_PORT: u16 = 15008;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    /// A workload IP or a service VIP on a network.
    Address(NetworkAddress),
    /// A service, found in the mesh state by namespace and hostname (preferred by istiod: it
    /// adapts to the client's address family).
    Hostname(NamespacedHostname),
}

impl fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            GatewayDestination::Address(a) => write!(f, "{a}")?,
            GatewayDestination::Hostname(h) => write!(f, "{h}")?,
        }
        write!(f, " (HBONE port {})", self.hbone_mtls_port)
    }
}

impl FromStr for GatewayDestination {
    type Err = String;

    /// `network/ip` (or a bare ip) is an address; `namespace/hostname` a service.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(address) = s.parse::<NetworkAddress>() {
            return Ok(GatewayDestination::Address(address));
        }
        s.parse::<NamespacedHostname>()
            .map(GatewayDestination::Hostname)
            .map_err(|_| format!("{s:?} is neither <network>/<ip> nor <namespace>/<hostname>"))
    }
}

/// A service's endpoint selection policy (Istio's `LoadBalancing`), applied by
/// `crate::state::balance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoadBalancing {
    /// Scopes the endpoint should share with the client, most important first.
    pub routing_preference: Vec<LbScope>,
    pub mode: LbMode,
    pub health_policy: LbHealthPolicy,
}

/// One part of the client's location an endpoint may share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbMode {
    /// Preferences ignored (the proto's UNSPECIFIED_MODE).
    #[default]
    Standard,
    /// Only endpoints sharing every preferred scope with the client; none is an error.
    Strict,
    /// Endpoints sharing the most leading scopes with the client.
    Failover,
    /// No endpoint selection: connect to the original destination (the VIP) as dialed.
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbHealthPolicy {
    #[default]
    OnlyHealthy,
    /// Unhealthy endpoints are candidates too.
    AllowAll,
}

impl Service {
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// An L4 authorization policy (Istio's `istio.security.Authorization`), keyed by
/// `namespace/name`, enforced on inbound connections by [`crate::authz`].
///
/// The nesting mirrors the proto so a policy round-trips unchanged: the action applies when
/// any rule matches; a rule matches when all its clauses match; a clause matches when any of
/// its matches does (the exact rules, including the empty cases, are in `crate::authz`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    pub rules: Vec<PolicyRule>,
    /// Evaluated and logged, never enforced.
    pub dry_run: bool,
}

impl Policy {
    /// The xDS resource name: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Checks a policy key as workloads list them: `namespace/name`, both parts present and free
/// of '/'. A malformed key could never name a policy, so it is refused rather than kept.
pub fn check_policy_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(format!("{key:?} is not <namespace>/<name>")),
    }
}

/// Which workloads a policy applies to. The default is the proto's zero value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyScope {
    /// Every workload in the mesh (istiod gives this scope to policies in its root
    /// namespace, and to the mesh-wide STRICT mTLS policy).
    #[default]
    Global,
    /// Workloads in the policy's namespace.
    Namespace,
    /// Workloads that list the policy by name (`authorizationPolicies`).
    WorkloadSelector,
}

/// What happens when a rule matches. The default is the proto's zero value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
}

/// Matches when all its clauses match (a rule without clauses matches every connection).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub clauses: Vec<PolicyClause>,
}

/// Matches when any of its matches does (Istio's `from`, `to` or `when` part of a rule); a
/// clause without matches is satisfied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyClause {
    pub matches: Vec<PolicyMatch>,
}

/// Conditions on one connection. Within one field any value may match (OR); every non-empty
/// field must be satisfied (AND); a `not_*` field is satisfied when none of its values match.
/// A match with no field set satisfies nothing (istiod never sends one; treating it as "any"
/// would widen a policy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyMatch {
    /// The source identity's namespace.
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// The source identity's namespace and service account, both exact.
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// The source identity without `spiffe://` (`<trust domain>/ns/<ns>/sa/<sa>`).
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}
