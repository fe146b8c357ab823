//! Store → xDS: the store's types encoded as Istio's resources (`istio.workload.Address`,
//! `istio.security.Authorization`), what the control plane serves. Encoding is deterministic
//! (maps are sorted) so an unchanged object always has the same bytes and version.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use nodetunnel_proto::istio::security as sec;
use nodetunnel_proto::istio::security::Authorization;
use nodetunnel_proto::istio::workload as wl;
use nodetunnel_proto::istio::workload::Address;

use nodetunnel::state::{
    GatewayAddress, GatewayDestination, HealthStatus, InboundProtocol, IpFamily, LbHealthPolicy,
    LbMode, LbScope, LoadBalancing, Locality, Policy, PolicyAction, PolicyMatch, PolicyScope,
    Service, ServiceAccountMatch, StringMatch, Workload, DEFAULT_CAPACITY,
};

fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Ports sorted by service port, so the same service always encodes to the same bytes.
fn ports_to_proto(ports: &HashMap<u16, u16>) -> Vec<wl::Port> {
    let mut out: Vec<_> = ports
        .iter()
        .map(|(&service_port, &target_port)| wl::Port {
            service_port: service_port.into(),
            target_port: target_port.into(),
        })
        .collect();
    out.sort_by_key(|p| p.service_port);
    out
}

/// An empty or unknown `workload_type` encodes as DEPLOYMENT, the proto's zero value.
pub fn workload_to_proto(workload: &Workload) -> Address {
    let workload_type =
        wl::WorkloadType::from_str_name(&workload.workload_type.to_ascii_uppercase())
            .unwrap_or(wl::WorkloadType::Deployment);
    let w = wl::Workload {
        uid: workload.uid.clone(),
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        addresses: workload
            .workload_ips
            .iter()
            .map(|ip| ip_to_bytes(*ip))
            .collect(),
        hostname: workload.hostname.clone(),
        network: workload.network.clone(),
        tunnel_protocol: match workload.protocol {
            InboundProtocol::Tcp => wl::TunnelProtocol::None,
            InboundProtocol::Hbone => wl::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: workload.trust_domain.clone(),
        service_account: workload.service_account.clone(),
        node: workload.node.clone(),
        canonical_name: workload.canonical_name.clone(),
        canonical_revision: workload.canonical_revision.clone(),
        workload_type: workload_type as i32,
        workload_name: workload.workload_name.clone(),
        services: workload
            .services
            .iter()
            .map(|(key, ports)| {
                let list = wl::PortList {
                    ports: ports_to_proto(ports),
                };
                (key.to_string(), list)
            })
            .collect(),
        status: match workload.status {
            HealthStatus::Healthy => wl::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => wl::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: workload.cluster_id.clone(),
        authorization_policies: workload.authorization_policies.clone(),
        network_mode: if workload.host_network {
            wl::NetworkMode::HostNetwork
        } else {
            wl::NetworkMode::Standard
        } as i32,
        locality: locality_to_proto(&workload.locality),
        capacity: capacity_to_proto(workload.capacity),
        waypoint: workload.waypoint.as_ref().map(gateway_to_proto),
        network_gateway: workload.network_gateway.as_ref().map(gateway_to_proto),
        ..Default::default()
    };
    Address {
        r#type: Some(wl::address::Type::Workload(w)),
    }
}

/// A waypoint as istiod sends it: by address or by the waypoint service's hostname.
fn gateway_to_proto(gw: &GatewayAddress) -> wl::GatewayAddress {
    use wl::gateway_address::Destination;
    let destination = match &gw.destination {
        GatewayDestination::Address(a) => Destination::Address(wl::NetworkAddress {
            network: a.network.clone(),
            address: ip_to_bytes(a.address),
            length: None,
        }),
        GatewayDestination::Hostname(h) => Destination::Hostname(wl::NamespacedHostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
    };
    wl::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(gw.hbone_mtls_port),
    }
}

/// No locality is sent when every part is empty, as istiod omits it for a pod without one;
/// the tunnel reads both the same.
fn locality_to_proto(l: &Locality) -> Option<wl::Locality> {
    if *l == Locality::default() {
        return None;
    }
    Some(wl::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

/// Unset means 1 on the wire, so only another value is sent — including 0, which must stay
/// explicit: an endpoint of capacity 0 is never picked, an unset one is picked as 1.
fn capacity_to_proto(capacity: u32) -> Option<u32> {
    (capacity != DEFAULT_CAPACITY).then_some(capacity)
}

fn load_balancing_to_proto(lb: &LoadBalancing) -> wl::LoadBalancing {
    use wl::load_balancing::{HealthPolicy, Mode};
    wl::LoadBalancing {
        routing_preference: lb
            .routing_preference
            .iter()
            .map(|scope| scope_to_proto(*scope) as i32)
            .collect(),
        mode: match lb.mode {
            LbMode::Standard => Mode::UnspecifiedMode,
            LbMode::Strict => Mode::Strict,
            LbMode::Failover => Mode::Failover,
            LbMode::Passthrough => Mode::Passthrough,
        } as i32,
        health_policy: match lb.health_policy {
            LbHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy,
            LbHealthPolicy::AllowAll => HealthPolicy::AllowAll,
        } as i32,
        ..Default::default()
    }
}

fn scope_to_proto(scope: LbScope) -> wl::load_balancing::Scope {
    use wl::load_balancing::Scope;
    match scope {
        LbScope::Region => Scope::Region,
        LbScope::Zone => Scope::Zone,
        LbScope::Subzone => Scope::Subzone,
        LbScope::Node => Scope::Node,
        LbScope::Cluster => Scope::Cluster,
        LbScope::Network => Scope::Network,
    }
}

pub fn service_to_proto(service: &Service) -> Address {
    let s = wl::Service {
        name: service.name.clone(),
        namespace: service.namespace.clone(),
        hostname: service.hostname.clone(),
        addresses: service
            .vips
            .iter()
            .map(|vip| wl::NetworkAddress {
                network: vip.network.clone(),
                address: ip_to_bytes(vip.address),
                length: None,
            })
            .chain(service.cidr_vips.iter().map(|range| wl::NetworkAddress {
                network: range.network.clone(),
                address: ip_to_bytes(range.cidr.network()),
                length: Some(u32::from(range.cidr.prefix_len())),
            }))
            .collect(),
        ports: ports_to_proto(&service.ports),
        subject_alt_names: service.subject_alt_names.clone(),
        ip_families: match service.ip_families {
            None => wl::IpFamilies::Automatic,
            Some(IpFamily::V4) => wl::IpFamilies::Ipv4Only,
            Some(IpFamily::V6) => wl::IpFamilies::Ipv6Only,
            Some(IpFamily::Dual) => wl::IpFamilies::Dual,
        } as i32,
        canonical: service.canonical,
        load_balancing: service.load_balancing.as_ref().map(load_balancing_to_proto),
        waypoint: service.waypoint.as_ref().map(gateway_to_proto),
        ..Default::default()
    };
    Address {
        r#type: Some(wl::address::Type::Service(s)),
    }
}

pub fn policy_to_proto(policy: &Policy) -> Authorization {
    Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: match policy.scope {
            PolicyScope::Global => sec::Scope::Global,
            PolicyScope::Namespace => sec::Scope::Namespace,
            PolicyScope::WorkloadSelector => sec::Scope::WorkloadSelector,
        } as i32,
        action: match policy.action {
            PolicyAction::Allow => sec::Action::Allow,
            PolicyAction::Deny => sec::Action::Deny,
        } as i32,
        rules: policy
            .rules
            .iter()
            .map(|rule| sec::Rule {
                clauses: rule
                    .clauses
                    .iter()
                    .map(|clause| sec::Clause {
                        matches: clause.matches.iter().map(match_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: policy.dry_run,
        extensions: vec![],
    }
}

fn match_to_proto(m: &PolicyMatch) -> sec::Match {
    let strings = |v: &[StringMatch]| v.iter().map(string_match_to_proto).collect();
    let accounts = |v: &[ServiceAccountMatch]| {
        v.iter()
            .map(|a| sec::ServiceAccountMatch {
                namespace: a.namespace.clone(),
                service_account: a.service_account.clone(),
            })
            .collect()
    };
    let nets = |v: &[IpNet]| {
        v.iter()
            .map(|net| sec::Address {
                address: ip_to_bytes(net.addr()),
                length: net.prefix_len().into(),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|&p| u32::from(p)).collect();
    sec::Match {
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
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        extensions: vec![],
    }
}

fn string_match_to_proto(m: &StringMatch) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let match_type = match m {
        StringMatch::Exact(s) => MatchType::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
        StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
        StringMatch::Presence => MatchType::Presence(()),
    };
    sec::StringMatch {
        match_type: Some(match_type),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_seeds;
