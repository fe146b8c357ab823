//! The `workloads`, `services` and `policies` sections of `/config_dump`, in ztunnel's shape:
//! the field names, value spellings and omissions of ztunnel's serialized state, which is what
//! `istioctl ztunnel-config workloads|services|policies` decodes (Go's `encoding/json` fails
//! the whole dump on one value of the wrong type, so a map must stay a map, a list a list).
//!
//! Views borrow from the store; nothing here changes it. Fields the store does not model
//! (network gateways, application tunnels, visibility) are left out, as ztunnel leaves out a
//! field at its default, rather than guessed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::state::{
    GatewayAddress, GatewayDestination, HealthStatus, InboundProtocol, IpFamily, LbHealthPolicy,
    LbMode, LbScope, LoadBalancing, Locality, Policy, PolicyAction, PolicyMatch, PolicyScope,
    Service, ServiceAccountMatch, Store, StringMatch, Workload,
};

/// One workload as ztunnel serializes it (`state::workload::Workload`, camelCase; strings at
/// their default omitted, except `name`, `namespace`, `protocol`, `status`, `clusterId` and
/// `capacity`, which ztunnel always writes).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadDump<'a> {
    workload_ips: &'a [IpAddr],
    protocol: &'static str,
    network_mode: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trust_domain: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    service_account: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    network: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    workload_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    workload_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_revision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    node: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    authorization_policies: &'a [String],
    status: &'static str,
    cluster_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<LocalityDump<'a>>,
    /// `namespace/hostname` of each service the workload backs, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    capacity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_gateway: Option<GatewayDump>,
}

/// A waypoint reference as ztunnel serializes `GatewayAddress`: the destination as one
/// string (`network/ip` or `namespace/hostname`) and the port.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDump {
    destination: String,
    hbone_mtls_port: u16,
}

fn gateway(gw: &GatewayAddress) -> GatewayDump {
    GatewayDump {
        destination: match &gw.destination {
            GatewayDestination::Address(a) => a.to_string(),
            GatewayDestination::Hostname(h) => h.to_string(),
        },
        hbone_mtls_port: gw.hbone_mtls_port,
    }
}

/// ztunnel writes all three parts once any is set.
#[derive(Debug, Serialize)]
pub struct LocalityDump<'a> {
    region: &'a str,
    zone: &'a str,
    subzone: &'a str,
}

/// One service as ztunnel serializes it (`state::service::Service`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDump<'a> {
    name: &'a str,
    namespace: &'a str,
    hostname: &'a str,
    /// `network/ip`.
    vips: Vec<String>,
    /// `{network, cidr}` as ztunnel writes them; left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cidr_vips: Vec<CidrDump<'a>>,
    /// Service port → target port (0: the endpoint's own mapping or the service port); JSON
    /// object keys are the port numbers as strings.
    ports: BTreeMap<u16, u16>,
    /// Keyed by workload uid.
    endpoints: BTreeMap<String, EndpointDump>,
    subject_alt_names: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<LoadBalancerDump>,
    /// `IPv4`, `IPv6` or `Dual`; left out when automatic.
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_families: Option<&'static str>,
    canonical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
}

/// One CIDR VIP (`state::workload::NetworkCidr`).
#[derive(Debug, Serialize)]
pub struct CidrDump<'a> {
    network: &'a str,
    cidr: String,
}

/// One endpoint of a service (`state::service::Endpoint`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDump {
    workload_uid: String,
    /// The workload's own service port → target port overrides for this service.
    port: BTreeMap<u16, u16>,
    status: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerDump {
    routing_preferences: Vec<&'static str>,
    mode: &'static str,
    health_policy: &'static str,
}

/// One policy as ztunnel serializes it (`rbac::Authorization`): rules are lists (rule) of
/// lists (clause) of matches, exactly the nesting of the proto.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDump<'a> {
    name: &'a str,
    namespace: &'a str,
    scope: &'static str,
    action: &'static str,
    rules: Vec<Vec<Vec<MatchDump<'a>>>>,
    dry_run: bool,
}

/// One match (`rbac::RbacMatch`): every empty list omitted.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchDump<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_accounts: Vec<ServiceAccountDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_service_accounts: Vec<ServiceAccountDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    destination_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_destination_ips: Vec<String>,
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    destination_ports: &'a [u16],
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    not_destination_ports: &'a [u16],
}

/// serde's external tagging, as ztunnel's enum serializes: `{"Exact": "v"}`, and
/// `{"Presence": []}` for its empty tuple variant.
#[derive(Debug, Serialize)]
pub enum StringMatchDump<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Presence([(); 0]),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountDump<'a> {
    namespace: &'a str,
    service_account: &'a str,
}

/// Every workload, sorted by uid (ztunnel's order).
pub fn workloads(store: &Store) -> Vec<WorkloadDump<'_>> {
    let mut list: Vec<_> = store.workloads().map(|w| workload(w)).collect();
    list.sort_by(|a, b| a.uid.cmp(b.uid));
    list
}

/// Every service, sorted by hostname, then namespace (ztunnel orders by hostname).
pub fn services(store: &Store) -> Vec<ServiceDump<'_>> {
    let mut list: Vec<_> = store.services().map(|s| service(store, s)).collect();
    list.sort_by(|a, b| (a.hostname, a.namespace).cmp(&(b.hostname, b.namespace)));
    list
}

/// Every policy, sorted by `namespace/name` (ztunnel's key).
pub fn policies(store: &Store) -> Vec<PolicyDump<'_>> {
    let mut list: Vec<_> = store.policies().map(|p| policy(p)).collect();
    list.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    list
}

pub fn workload(w: &Workload) -> WorkloadDump<'_> {
    let mut services: Vec<String> = w.services.keys().map(ToString::to_string).collect();
    services.sort();
    WorkloadDump {
        workload_ips: &w.workload_ips,
        protocol: protocol(w.protocol),
        network_mode: if w.host_network {
            "HostNetwork"
        } else {
            "Standard"
        },
        uid: &w.uid,
        name: &w.name,
        namespace: &w.namespace,
        trust_domain: &w.trust_domain,
        service_account: &w.service_account,
        network: &w.network,
        workload_name: &w.workload_name,
        workload_type: &w.workload_type,
        canonical_name: &w.canonical_name,
        canonical_revision: &w.canonical_revision,
        hostname: &w.hostname,
        node: &w.node,
        authorization_policies: &w.authorization_policies,
        status: status(w.status),
        cluster_id: &w.cluster_id,
        locality: locality(&w.locality),
        services,
        capacity: w.capacity,
        waypoint: w.waypoint.as_ref().map(gateway),
        network_gateway: w.network_gateway.as_ref().map(gateway),
    }
}

fn protocol(p: InboundProtocol) -> &'static str {
    match p {
        InboundProtocol::Tcp => "TCP",
        InboundProtocol::Hbone => "HBONE",
    }
}

fn status(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Healthy => "Healthy",
        HealthStatus::Unhealthy => "Unhealthy",
    }
}

fn locality(l: &Locality) -> Option<LocalityDump<'_>> {
    (*l != Locality::default()).then_some(LocalityDump {
        region: &l.region,
        zone: &l.zone,
        subzone: &l.subzone,
    })
}

pub fn service<'a>(store: &Store, s: &'a Service) -> ServiceDump<'a> {
    let key = s.key();
    let endpoints = store
        .endpoints(&key)
        .iter()
        .map(|w| {
            let endpoint = EndpointDump {
                workload_uid: w.uid.clone(),
                port: w
                    .services
                    .get(&key)
                    .map(|ports| ports.iter().map(|(k, v)| (*k, *v)).collect())
                    .unwrap_or_default(),
                status: status(w.status),
            };
            (w.uid.clone(), endpoint)
        })
        .collect();
    ServiceDump {
        name: &s.name,
        namespace: &s.namespace,
        hostname: &s.hostname,
        vips: s.vips.iter().map(ToString::to_string).collect(),
        cidr_vips: s
            .cidr_vips
            .iter()
            .map(|range| CidrDump {
                network: &range.network,
                cidr: range.cidr.to_string(),
            })
            .collect(),
        ports: s.ports.iter().map(|(k, v)| (*k, *v)).collect(),
        endpoints,
        subject_alt_names: &s.subject_alt_names,
        load_balancer: s.load_balancing.as_ref().map(load_balancer),
        ip_families: s.ip_families.map(|f| match f {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
            IpFamily::Dual => "Dual",
        }),
        canonical: s.canonical,
        waypoint: s.waypoint.as_ref().map(gateway),
    }
}

fn load_balancer(lb: &LoadBalancing) -> LoadBalancerDump {
    LoadBalancerDump {
        routing_preferences: lb
            .routing_preference
            .iter()
            .map(|s| match s {
                LbScope::Region => "Region",
                LbScope::Zone => "Zone",
                LbScope::Subzone => "Subzone",
                LbScope::Node => "Node",
                LbScope::Cluster => "Cluster",
                LbScope::Network => "Network",
            })
            .collect(),
        mode: match lb.mode {
            LbMode::Standard => "Standard",
            LbMode::Strict => "Strict",
            LbMode::Failover => "Failover",
            LbMode::Passthrough => "Passthrough",
        },
        health_policy: match lb.health_policy {
            LbHealthPolicy::OnlyHealthy => "OnlyHealthy",
            LbHealthPolicy::AllowAll => "AllowAll",
        },
    }
}

pub fn policy(p: &Policy) -> PolicyDump<'_> {
    PolicyDump {
        name: &p.name,
        namespace: &p.namespace,
        scope: match p.scope {
            PolicyScope::Global => "Global",
            PolicyScope::Namespace => "Namespace",
            PolicyScope::WorkloadSelector => "WorkloadSelector",
        },
        action: match p.action {
            PolicyAction::Allow => "Allow",
            PolicyAction::Deny => "Deny",
        },
        rules: p
            .rules
            .iter()
            .map(|rule| {
                rule.clauses
                    .iter()
                    .map(|clause| clause.matches.iter().map(policy_match).collect())
                    .collect()
            })
            .collect(),
        dry_run: p.dry_run,
    }
}

fn string_matches(list: &[StringMatch]) -> Vec<StringMatchDump<'_>> {
    list.iter()
        .map(|s| match s {
            StringMatch::Exact(v) => StringMatchDump::Exact(v),
            StringMatch::Prefix(v) => StringMatchDump::Prefix(v),
            StringMatch::Suffix(v) => StringMatchDump::Suffix(v),
            StringMatch::Presence => StringMatchDump::Presence([]),
        })
        .collect()
}

fn accounts(list: &[ServiceAccountMatch]) -> Vec<ServiceAccountDump<'_>> {
    list.iter()
        .map(|a| ServiceAccountDump {
            namespace: &a.namespace,
            service_account: &a.service_account,
        })
        .collect()
}

fn policy_match(m: &PolicyMatch) -> MatchDump<'_> {
    let strings = string_matches;
    let nets = |list: &[ipnet::IpNet]| list.iter().map(ToString::to_string).collect();
    MatchDump {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: &m.destination_ports,
        not_destination_ports: &m.not_destination_ports,
    }
}
