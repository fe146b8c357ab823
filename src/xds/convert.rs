//! xDS → store: received Istio resources (`istio.workload.Address`, `istio.security.Authorization`)
//! converted into the store's types. (The other direction, store → xDS, is the control plane's.)
//!
//! Received resources come from the network, so every conversion validates what the data path
//! relies on (uids, namespaces, address lengths, ports, enum values) and fails with the
//! resource name, the field and the reason instead of storing something half-valid. Fields
//! the store does not model (application tunnels, ...) are accepted and dropped.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nodetunnel_proto::istio::security as sec;
use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload as wl;
use nodetunnel_proto::istio::workload::Address;

use crate::state::{
    check_policy_key, workload_type_name, Defaults, HealthStatus, InboundProtocol,
    NamespacedHostname, NetworkAddress, Policy, PolicyAction, PolicyClause, PolicyMatch,
    PolicyRule, PolicyScope, Service, ServiceAccountMatch, StringMatch, Workload,
};
use crate::state::{unusable_address, unusable_range, IpFamily, NetworkCidr};
use crate::state::{GatewayAddress, GatewayDestination, DEFAULT_GATEWAY_HBONE_PORT};
use crate::state::{LbHealthPolicy, LbMode, LbScope, LoadBalancing, Locality, DEFAULT_CAPACITY};

/// What one `istio.workload.Address` resource holds.
// Each value is built once and moved straight into a `StoreDelta` vector; boxing the
// workload would cost an extra allocation per resource (100k in a full push) for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    Workload(Workload),
    Service(Service),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The resource is wrong: the push is NACKed naming it. `field` is the proto field path,
    /// e.g. `workload.addresses[1]`.
    #[error("resource {name:?}: {field}: {reason}")]
    Invalid {
        name: String,
        field: String,
        reason: String,
    },
    /// The resource uses an enum value this version does not know, where ztunnel drops the
    /// resource: a newer istiod is not wrong, so the resource is skipped with a warning and the
    /// push is still ACKed (the last version we understood, if any, stays).
    #[error("resource {name:?}: {field}: {reason}; not understood by this version, ignored")]
    Unsupported {
        name: String,
        field: String,
        reason: String,
    },
}

/// A field that failed validation, its path built from the inside out as the error travels up
/// (so the success path never formats a path).
#[derive(Debug)]
struct FieldError {
    field: String,
    reason: String,
    /// An unknown enum value rather than a wrong one (see [`ProtoError::Unsupported`]).
    unsupported: bool,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
            unsupported: false,
        }
    }

    /// Prefixes the path with the enclosing field: `addresses[1]` under `workload`.
    fn under(mut self, parent: impl fmt::Display) -> FieldError {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    fn in_resource(self, name: &str) -> ProtoError {
        let (name, field, reason) = (name.to_string(), self.field, self.reason);
        if self.unsupported {
            ProtoError::Unsupported {
                name,
                field,
                reason,
            }
        } else {
            ProtoError::Invalid {
                name,
                field,
                reason,
            }
        }
    }
}

type FieldResult<T> = Result<T, FieldError>;

/// Converts a received Address resource named `name`; the name must be the workload's uid or
/// the service's `namespace/hostname`. Empty identity fields get `defaults`, as in local files.
pub fn address_from_proto(
    name: &str,
    address: Address,
    defaults: &Defaults,
) -> Result<AddressResource, ProtoError> {
    match address.r#type {
        Some(wl::address::Type::Workload(w)) => workload_from_proto(name, w, defaults)
            .map(AddressResource::Workload)
            .map_err(|e| e.under("workload").in_resource(name)),
        Some(wl::address::Type::Service(s)) => service_from_proto(name, s)
            .map(AddressResource::Service)
            .map_err(|e| e.under("service").in_resource(name)),
        None => Err(
            FieldError::new("type", "empty: neither `workload` nor `service` is set")
                .in_resource(name),
        ),
    }
}

/// Converts a received Authorization resource named `name` (`namespace/name`).
pub fn authorization_from_proto(name: &str, auth: Authorization) -> Result<Policy, ProtoError> {
    policy_from_proto(name, auth).map_err(|e| e.in_resource(name))
}

fn workload_from_proto(name: &str, w: wl::Workload, defaults: &Defaults) -> FieldResult<Workload> {
    if w.uid.is_empty() {
        return Err(FieldError::new("uid", "must not be empty"));
    }
    if w.uid != name {
        return Err(FieldError::new(
            "uid",
            format!("{:?} differs from the resource name", w.uid),
        ));
    }
    if w.namespace.is_empty() {
        return Err(FieldError::new("namespace", "must not be empty"));
    }
    let workload_ips = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            usable_ip_from_bytes(bytes).map_err(|e| e.under(format!("addresses[{i}]")))
        })
        .collect::<FieldResult<Vec<_>>>()?;
    let protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::None) => InboundProtocol::Tcp,
        Ok(wl::TunnelProtocol::Hbone) => InboundProtocol::Hbone,
        Err(_) => return Err(unknown_enum("tunnel_protocol", w.tunnel_protocol)),
    };
    let status = match wl::WorkloadStatus::try_from(w.status) {
        Ok(wl::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(wl::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => return Err(unknown_enum("status", w.status)),
    };
    let host_network = match wl::NetworkMode::try_from(w.network_mode) {
        Ok(wl::NetworkMode::Standard) => false,
        Ok(wl::NetworkMode::HostNetwork) => true,
        Err(_) => return Err(unknown_enum("network_mode", w.network_mode)),
    };
    // Only a label: ztunnel reads an unknown type as the default (DEPLOYMENT), and so do we.
    let workload_type = wl::WorkloadType::try_from(w.workload_type).unwrap_or_else(|_| {
        tracing::warn!(
            resource = name,
            "workload.workload_type: unknown enum value {}, read as DEPLOYMENT",
            w.workload_type
        );
        wl::WorkloadType::Deployment
    });
    let services = w
        .services
        .into_iter()
        .map(|(key, list)| service_ports_entry(key, list))
        .collect::<FieldResult<HashMap<_, _>>>()?;
    let authorization_policies = w
        .authorization_policies
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            check_policy_key(&key)
                .map(|()| key)
                .map_err(|reason| FieldError::new(format!("authorization_policies[{i}]"), reason))
        })
        .collect::<FieldResult<Vec<_>>>()?;
    let waypoint = match w.waypoint {
        Some(gw) => Some(gateway_from_proto(gw).map_err(|e| e.under("waypoint"))?),
        None => None,
    };
    let network_gateway = match w.network_gateway {
        Some(gw) => Some(gateway_from_proto(gw).map_err(|e| e.under("network_gateway"))?),
        None => None,
    };
    let mut workload = Workload {
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account,
        trust_domain: w.trust_domain,
        workload_ips,
        protocol,
        node: w.node,
        network: w.network,
        cluster_id: w.cluster_id,
        hostname: w.hostname,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_name: w.workload_name,
        workload_type: workload_type_name(workload_type),
        status,
        services,
        authorization_policies,
        host_network,
        locality: w.locality.map(locality_from_proto).unwrap_or_default(),
        capacity: w.capacity.unwrap_or(DEFAULT_CAPACITY),
        waypoint,
        network_gateway,
    };
    defaults.fill_workload(&mut workload);
    Ok(workload)
}

/// One entry of a workload's `services` map: `namespace/hostname` → its port overrides.
fn service_ports_entry(
    key: String,
    list: wl::PortList,
) -> FieldResult<(NamespacedHostname, HashMap<u16, u16>)> {
    let field = || format!("services[{key:?}]");
    let parsed = key
        .parse::<NamespacedHostname>()
        .map_err(|reason| FieldError::new(field(), reason))?;
    let ports = ports_from_proto(&list.ports).map_err(|e| e.under(field()))?;
    Ok((parsed, ports))
}

fn service_from_proto(name: &str, s: wl::Service) -> FieldResult<Service> {
    check_namespaced_name(name, &s.namespace, ("hostname", &s.hostname))?;
    let mut vips = Vec::new();
    let mut cidr_vips = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        match vip_from_proto(a).map_err(|e| e.under(format!("addresses[{i}]")))? {
            Vip::Exact(vip) => vips.push(vip),
            Vip::Range(range) => cidr_vips.push(range),
        }
    }
    let ports = ports_from_proto(&s.ports)?;
    let ip_families = match wl::IpFamilies::try_from(s.ip_families) {
        Ok(wl::IpFamilies::Automatic) => None,
        Ok(wl::IpFamilies::Ipv4Only) => Some(IpFamily::V4),
        Ok(wl::IpFamilies::Ipv6Only) => Some(IpFamily::V6),
        Ok(wl::IpFamilies::Dual) => Some(IpFamily::Dual),
        // Only narrows which endpoint address family is dialed: ignoring an unknown value
        // (reading it as AUTOMATIC) keeps the service, and its traffic in the mesh, where
        // dropping the resource would let its VIP pass through unprotected.
        Err(_) => {
            tracing::warn!(
                resource = name,
                "service.ip_families: unknown enum value {}, read as AUTOMATIC",
                s.ip_families
            );
            None
        }
    };
    let load_balancing = match s.load_balancing {
        Some(lb) => Some(load_balancing_from_proto(&lb).map_err(|e| e.under("load_balancing"))?),
        None => None,
    };
    let waypoint = match s.waypoint {
        Some(gw) => Some(gateway_from_proto(gw).map_err(|e| e.under("waypoint"))?),
        None => None,
    };
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        cidr_vips,
        ports,
        subject_alt_names: s.subject_alt_names,
        load_balancing,
        ip_families,
        canonical: s.canonical,
        waypoint,
    })
}

/// A waypoint reference: a usable address, or a service key with both parts. A waypoint that
/// cannot be read is a NACK, not a drop: dropping it would send the traffic straight to its
/// destination, skipping the waypoint's L7 policy. Port 0 (unset) reads as 15008.
fn gateway_from_proto(gw: wl::GatewayAddress) -> FieldResult<GatewayAddress> {
    use wl::gateway_address::Destination;
    let destination = match gw.destination {
        Some(Destination::Address(a)) => {
            if a.length
                .is_some_and(|len| len != if a.address.len() == 4 { 32 } else { 128 })
            {
                return Err(FieldError::new(
                    "address.length",
                    "a waypoint address must be a single address, not a range",
                ));
            }
            let ip = usable_ip_from_bytes(&a.address).map_err(|e| e.under("address.address"))?;
            GatewayDestination::Address(NetworkAddress::new(a.network, ip))
        }
        Some(Destination::Hostname(h)) => {
            for (field, value) in [("namespace", &h.namespace), ("hostname", &h.hostname)] {
                if value.is_empty() {
                    return Err(FieldError::new(
                        format!("hostname.{field}"),
                        "must not be empty",
                    ));
                }
                if value.contains('/') {
                    return Err(FieldError::new(
                        format!("hostname.{field}"),
                        format!("{value:?} contains '/'"),
                    ));
                }
            }
            GatewayDestination::Hostname(NamespacedHostname {
                namespace: h.namespace,
                hostname: h.hostname,
            })
        }
        None => {
            return Err(FieldError::new(
                "destination",
                "empty: neither `hostname` nor `address` is set",
            ))
        }
    };
    let hbone_mtls_port = match u16::try_from(gw.hbone_mtls_port) {
        Ok(0) => DEFAULT_GATEWAY_HBONE_PORT,
        Ok(p) => p,
        Err(_) => {
            return Err(FieldError::new(
                "hbone_mtls_port",
                too_big(gw.hbone_mtls_port),
            ))
        }
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

/// One entry of a service's `addresses`: a single VIP, or a range (`length` shorter than the
/// address) the service answers on throughout.
enum Vip {
    Exact(NetworkAddress),
    Range(NetworkCidr),
}

fn vip_from_proto(a: &wl::NetworkAddress) -> FieldResult<Vip> {
    let ip = ip_from_bytes(&a.address).map_err(|e| e.under("address"))?;
    let full = if ip.is_ipv4() { 32 } else { 128 };
    match a.length {
        Some(len) if len > full => Err(FieldError::new(
            "length",
            format!("prefix length {len} exceeds {full} for {ip}"),
        )),
        Some(len) if len < full => {
            // Host bits are dropped, as a route would: 10.1.2.3/24 is 10.1.2.0/24.
            let cidr = IpNet::new(ip, len as u8)
                .map_err(|e| FieldError::new("length", e.to_string()))?
                .trunc();
            if let Some(reason) = unusable_range(cidr) {
                return Err(FieldError::new("", format!("{cidr}: {reason}")));
            }
            Ok(Vip::Range(NetworkCidr {
                network: a.network.clone(),
                cidr,
            }))
        }
        _ => match unusable_address(ip) {
            Some(reason) => Err(FieldError::new("address", format!("{ip}: {reason}"))),
            None => Ok(Vip::Exact(NetworkAddress::new(a.network.clone(), ip))),
        },
    }
}

fn locality_from_proto(l: wl::Locality) -> Locality {
    Locality {
        region: l.region,
        zone: l.zone,
        subzone: l.subzone,
    }
}

/// ztunnel refuses a service whose load balancing it cannot read (an unknown or unspecified
/// scope, an unknown mode or health policy): we skip it the same way, without a NACK.
fn load_balancing_from_proto(lb: &wl::LoadBalancing) -> FieldResult<LoadBalancing> {
    use wl::load_balancing::{HealthPolicy, Mode, Scope};
    let routing_preference = lb
        .routing_preference
        .iter()
        .enumerate()
        .map(|(i, &v)| match Scope::try_from(v) {
            Ok(Scope::Region) => Ok(LbScope::Region),
            Ok(Scope::Zone) => Ok(LbScope::Zone),
            Ok(Scope::Subzone) => Ok(LbScope::Subzone),
            Ok(Scope::Node) => Ok(LbScope::Node),
            Ok(Scope::Cluster) => Ok(LbScope::Cluster),
            Ok(Scope::Network) => Ok(LbScope::Network),
            Ok(Scope::UnspecifiedScope) | Err(_) => {
                Err(unknown_enum(&format!("routing_preference[{i}]"), v))
            }
        })
        .collect::<FieldResult<Vec<_>>>()?;
    let mode = match Mode::try_from(lb.mode) {
        Ok(Mode::UnspecifiedMode) => LbMode::Standard,
        Ok(Mode::Strict) => LbMode::Strict,
        Ok(Mode::Failover) => LbMode::Failover,
        Ok(Mode::Passthrough) => LbMode::Passthrough,
        Err(_) => return Err(unknown_enum("mode", lb.mode)),
    };
    let health_policy = match HealthPolicy::try_from(lb.health_policy) {
        Ok(HealthPolicy::OnlyHealthy) => LbHealthPolicy::OnlyHealthy,
        Ok(HealthPolicy::AllowAll) => LbHealthPolicy::AllowAll,
        Err(_) => return Err(unknown_enum("health_policy", lb.health_policy)),
    };
    Ok(LoadBalancing {
        routing_preference,
        mode,
        health_policy,
    })
}

/// Services and policies are named `<namespace>/<local name>` in xDS: both parts must be
/// present, free of '/', and match the resource `name` they arrived under. `local` is the field
/// holding the second part (`hostname` or `name`) and its value.
fn check_namespaced_name(name: &str, namespace: &str, local: (&str, &str)) -> FieldResult<()> {
    let (local_field, local_value) = local;
    for (field, value) in [("namespace", namespace), local] {
        if value.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if value.contains('/') {
            return Err(FieldError::new(
                field,
                format!("{value:?} contains '/', which makes the resource name ambiguous"),
            ));
        }
    }
    if name.split_once('/') != Some((namespace, local_value)) {
        return Err(FieldError::new(
            local_field,
            format!(
                "namespace/{local_field} \"{namespace}/{local_value}\" differs from the resource name"
            ),
        ));
    }
    Ok(())
}

/// Service port → target port. A service port must be 1..=65535 and listed once; a target
/// port of 0 means "same as the service port".
fn ports_from_proto(ports: &[wl::Port]) -> FieldResult<HashMap<u16, u16>> {
    let mut out = HashMap::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let at = |e: FieldError| e.under(format!("ports[{i}]"));
        let service_port = nonzero_port("service_port", p.service_port).map_err(at)?;
        let target_port = u16::try_from(p.target_port)
            .map_err(|_| at(FieldError::new("target_port", too_big(p.target_port))))?;
        if out.insert(service_port, target_port).is_some() {
            return Err(at(FieldError::new(
                "service_port",
                format!("service port {service_port} is listed twice"),
            )));
        }
    }
    Ok(out)
}

fn policy_from_proto(name: &str, auth: Authorization) -> FieldResult<Policy> {
    check_namespaced_name(name, &auth.namespace, ("name", &auth.name))?;
    let scope = match sec::Scope::try_from(auth.scope) {
        Ok(sec::Scope::Global) => PolicyScope::Global,
        Ok(sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
        Err(_) => return Err(unknown_enum("scope", auth.scope)),
    };
    let action = match sec::Action::try_from(auth.action) {
        Ok(sec::Action::Allow) => PolicyAction::Allow,
        Ok(sec::Action::Deny) => PolicyAction::Deny,
        Err(_) => return Err(unknown_enum("action", auth.action)),
    };
    let rules = indexed("rules", auth.rules, rule_from_proto)?;
    Ok(Policy {
        name: auth.name,
        namespace: auth.namespace,
        scope,
        action,
        rules,
        dry_run: auth.dry_run,
    })
}

/// Converts each element, naming the failing one `field[i]`.
fn indexed<P, T>(
    field: &str,
    items: Vec<P>,
    convert: impl Fn(P) -> FieldResult<T>,
) -> FieldResult<Vec<T>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item).map_err(|e| e.under(format!("{field}[{i}]"))))
        .collect()
}

fn rule_from_proto(rule: sec::Rule) -> FieldResult<PolicyRule> {
    Ok(PolicyRule {
        clauses: indexed("clauses", rule.clauses, clause_from_proto)?,
    })
}

fn clause_from_proto(clause: sec::Clause) -> FieldResult<PolicyClause> {
    Ok(PolicyClause {
        matches: indexed("matches", clause.matches, match_from_proto)?,
    })
}

fn match_from_proto(m: sec::Match) -> FieldResult<PolicyMatch> {
    Ok(PolicyMatch {
        namespaces: indexed("namespaces", m.namespaces, string_match_from_proto)?,
        not_namespaces: indexed("not_namespaces", m.not_namespaces, string_match_from_proto)?,
        service_accounts: m
            .service_accounts
            .into_iter()
            .map(service_account_from_proto)
            .collect(),
        not_service_accounts: m
            .not_service_accounts
            .into_iter()
            .map(service_account_from_proto)
            .collect(),
        principals: indexed("principals", m.principals, string_match_from_proto)?,
        not_principals: indexed("not_principals", m.not_principals, string_match_from_proto)?,
        source_ips: indexed("source_ips", m.source_ips, ip_net_from_proto)?,
        not_source_ips: indexed("not_source_ips", m.not_source_ips, ip_net_from_proto)?,
        destination_ips: indexed("destination_ips", m.destination_ips, ip_net_from_proto)?,
        not_destination_ips: indexed(
            "not_destination_ips",
            m.not_destination_ips,
            ip_net_from_proto,
        )?,
        destination_ports: match_ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: match_ports("not_destination_ports", &m.not_destination_ports)?,
    })
}

/// An empty StringMatch is refused rather than skipped: dropping it could turn
/// `namespaces: [<empty>]` into "no namespace condition", widening the policy.
fn string_match_from_proto(m: sec::StringMatch) -> FieldResult<StringMatch> {
    use sec::string_match::MatchType;
    match m.match_type {
        Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s)),
        Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s)),
        Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s)),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(FieldError::new(
            "match_type",
            "empty: none of exact, prefix, suffix, presence is set",
        )),
    }
}

fn service_account_from_proto(m: sec::ServiceAccountMatch) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: m.namespace,
        service_account: m.service_account,
    }
}

fn ip_net_from_proto(a: sec::Address) -> FieldResult<IpNet> {
    let ip = ip_from_bytes(&a.address).map_err(|e| e.under("address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    u8::try_from(a.length)
        .ok()
        .and_then(|len| IpNet::new(ip, len).ok())
        .ok_or_else(|| {
            FieldError::new(
                "length",
                format!("prefix length {} exceeds {max} for {ip}", a.length),
            )
        })
}

fn match_ports(field: &str, ports: &[u32]) -> FieldResult<Vec<u16>> {
    ports
        .iter()
        .enumerate()
        .map(|(i, &p)| nonzero_port(&format!("{field}[{i}]"), p))
        .collect()
}

fn nonzero_port(field: &str, port: u32) -> FieldResult<u16> {
    match u16::try_from(port) {
        Ok(0) => Err(FieldError::new(field, "port 0 is not a valid port")),
        Ok(p) => Ok(p),
        Err(_) => Err(FieldError::new(field, too_big(port))),
    }
}

fn too_big(port: u32) -> String {
    format!("port {port} exceeds 65535")
}

/// The field path is empty: callers place it under the field the bytes came from.
fn ip_from_bytes(bytes: &[u8]) -> FieldResult<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(FieldError::new(
            "",
            format!("{} bytes, expected 4 (IPv4) or 16 (IPv6)", bytes.len()),
        ))
    }
}

/// [`ip_from_bytes`] for a workload address or a service VIP: loopback and unspecified
/// addresses are refused (see `state::unusable_address`).
fn usable_ip_from_bytes(bytes: &[u8]) -> FieldResult<IpAddr> {
    let ip = ip_from_bytes(bytes)?;
    match unusable_address(ip) {
        Some(reason) => Err(FieldError::new("", format!("{ip}: {reason}"))),
        None => Ok(ip),
    }
}

/// An enum value this version does not know: the resource is skipped, not NACKed (see
/// [`ProtoError::Unsupported`]).
fn unknown_enum(field: &str, value: i32) -> FieldError {
    FieldError {
        unsupported: true,
        ..FieldError::new(field, format!("unknown enum value {value}"))
    }
}

#[cfg(test)]
mod tests;
