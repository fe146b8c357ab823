//! The daemon's inputs: the local YAML config (ztunnel's `LOCAL_XDS_PATH` shape), the CA
//! directory (`nodetunnel generate-ca`) and the environment.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::cmd;
use crate::control::ControlPlane;
use crate::error::{Error, Result};
use crate::topology::addr;

mod balance;
mod policy;
pub use balance::{LbHealthPolicy, LbMode, LbScope, LoadBalancer, Locality};
pub use policy::{Match, Policy, PolicyAction, PolicyScope, Rule, StringMatch};

/// The trust domain used unless a test says otherwise.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The files `generate-ca` must write (Istio's plug-in CA names).
pub const CA_FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// How a workload receives traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Through its node's tunnel (:15008).
    Hbone,
    /// Plain TCP: senders pass through without a tunnel.
    Tcp,
}

impl Protocol {
    fn as_yaml(self) -> &'static str {
        match self {
            Protocol::Hbone => "HBONE",
            Protocol::Tcp => "TCP",
        }
    }
}

/// One `workloads:` entry.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<Ipv4Addr>,
    /// IPv6 addresses, written after `ips` in `workloadIps` (dual-stack pods).
    pub ips6: Vec<std::net::Ipv6Addr>,
    pub protocol: Protocol,
    pub node: String,
    /// `"<ns>/<hostname>"` → `[(service port, target port)]`.
    pub services: Vec<(String, Vec<(u16, u16)>)>,
    /// `authorizationPolicies`: the `namespace/name` of each workload-selector policy that
    /// selects this workload.
    pub authorization_policies: Vec<String>,
    /// A host-network pod (`networkMode: HostNetwork`): its IPs are its node's.
    pub host_network: bool,
    /// `locality:`; none written when `None`.
    pub locality: Option<Locality>,
    /// `capacity:` (its weight among a service's endpoints); unset means 1.
    pub capacity: Option<u32>,
    /// `status: Healthy` (ready) or `Unhealthy` (not ready).
    pub healthy: bool,
    /// `clusterId:`; none written when empty (the loader's default cluster then).
    pub cluster_id: String,
    /// `hostname:`: a ServiceEntry endpoint with DNS resolution, looked up by the tunnel when
    /// `ips` is empty. None written when empty.
    pub hostname: String,
    /// `waypoint: {destination, hboneMtlsPort}` (ztunnel's local shape); none when `None`.
    pub waypoint: Option<Waypoint>,
    /// `network:`; none written when empty (the default network).
    pub network: String,
    /// `networkGateway:` in the waypoint's shape: how clients on other networks reach it.
    pub network_gateway: Option<Waypoint>,
}

/// A waypoint reference: `destination` is `"<network>/<ip>"` or `"<namespace>/<hostname>"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waypoint {
    pub destination: String,
    pub hbone_mtls_port: u16,
}

impl Waypoint {
    /// The waypoint service `<namespace>/<hostname>`, its instances listening on `port`.
    pub fn by_hostname(key: &str, port: u16) -> Waypoint {
        Waypoint {
            destination: key.into(),
            hbone_mtls_port: port,
        }
    }

    /// The gateway or waypoint at `ip` on `network`, listening on `port`.
    pub fn on_network(network: &str, ip: Ipv4Addr, port: u16) -> Waypoint {
        Waypoint {
            destination: format!("{network}/{ip}"),
            hbone_mtls_port: port,
        }
    }

    /// The waypoint at `ip` (default network), listening on `port`.
    pub fn by_ip(ip: Ipv4Addr, port: u16) -> Waypoint {
        Waypoint {
            destination: format!("/{ip}"),
            hbone_mtls_port: port,
        }
    }

    fn as_yaml(&self) -> String {
        format!(
            "{{destination: {}, hboneMtlsPort: {}}}",
            quote(&self.destination),
            self.hbone_mtls_port
        )
    }
}

impl Workload {
    /// An HBONE workload in namespace `default` whose service account is its name.
    pub fn new(name: &str, ip: Ipv4Addr, node: &str) -> Self {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            service_account: name.into(),
            ips: vec![ip],
            ips6: Vec::new(),
            protocol: Protocol::Hbone,
            node: node.into(),
            services: Vec::new(),
            authorization_policies: Vec::new(),
            host_network: false,
            locality: None,
            capacity: None,
            healthy: true,
            cluster_id: String::new(),
            hostname: String::new(),
            waypoint: None,
            network: String::new(),
            network_gateway: None,
        }
    }

    /// Adds an IPv6 address (a dual-stack pod).
    pub fn ipv6(mut self, ip: std::net::Ipv6Addr) -> Self {
        self.ips6.push(ip);
        self
    }

    /// On network `network`, reached from other networks through `gateway` (if any).
    pub fn on_network(mut self, network: &str, gateway: Option<Waypoint>) -> Self {
        self.network = network.into();
        self.network_gateway = gateway;
        self
    }

    /// Traffic addressed to this workload goes through `waypoint`.
    pub fn waypoint(mut self, waypoint: Waypoint) -> Self {
        self.waypoint = Some(waypoint);
        self
    }

    /// A plain-TCP endpoint known by `hostname` only (no address), as istiod sends the
    /// endpoints of a `resolution: DNS` ServiceEntry.
    pub fn by_hostname(name: &str, hostname: &str, node: &str) -> Self {
        let mut w = Workload::new(name, Ipv4Addr::UNSPECIFIED, node).protocol(Protocol::Tcp);
        w.ips.clear();
        w.hostname = hostname.into();
        w
    }

    pub fn cluster_id(mut self, cluster_id: &str) -> Self {
        self.cluster_id = cluster_id.into();
        self
    }

    pub fn locality(mut self, locality: Locality) -> Self {
        self.locality = Some(locality);
        self
    }

    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Not ready (`status: Unhealthy`): a service sends it nothing unless its load balancing
    /// admits every endpoint ([`LoadBalancer::allow_all`]).
    pub fn unhealthy(mut self) -> Self {
        self.healthy = false;
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.into();
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Makes this workload an endpoint of `service` (port → target port).
    pub fn endpoint_of(mut self, service: &Service, ports: &[(u16, u16)]) -> Self {
        self.services.push((
            format!("{}/{}", service.namespace, service.hostname),
            ports.to_vec(),
        ));
        self
    }

    /// Lists `policy` (a [`PolicyScope::WorkloadSelector`] one) as selecting this workload.
    pub fn selected_by(mut self, policy: &Policy) -> Self {
        self.authorization_policies.push(policy.key());
        self
    }

    /// `cluster1//v1/Pod/<namespace>/<name>`.
    pub fn uid(&self) -> String {
        format!("cluster1//v1/Pod/{}/{}", self.namespace, self.name)
    }

    /// The SPIFFE identity this workload's certificate carries.
    pub fn identity(&self) -> String {
        spiffe_id(&self.namespace, &self.service_account)
    }
}

/// One `services:` entry.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<Ipv4Addr>,
    pub ports: Vec<(u16, u16)>,
    /// `loadBalancer:`; none written when `None` (endpoints chosen by capacity alone).
    pub load_balancer: Option<LoadBalancer>,
    /// `cidrVips:` (address, prefix length): ranges the service answers on.
    pub cidr_vips: Vec<(Ipv4Addr, u8)>,
    /// `ipFamilies:` (`IPv4`, `IPv6` or `Dual`); none written when `None`.
    pub ip_families: Option<&'static str>,
    /// `canonical: true` when set.
    pub canonical: bool,
    /// Traffic to the VIPs goes through this waypoint; none written when `None`.
    pub waypoint: Option<Waypoint>,
}

impl Service {
    /// Service `name` in namespace `default` with hostname `<name>.default.svc.cluster.local`.
    pub fn new(name: &str, vip: Ipv4Addr, ports: &[(u16, u16)]) -> Self {
        Service {
            name: name.into(),
            namespace: "default".into(),
            hostname: format!("{name}.default.svc.cluster.local"),
            vips: vec![vip],
            ports: ports.to_vec(),
            load_balancer: None,
            cidr_vips: Vec::new(),
            ip_families: None,
            canonical: false,
            waypoint: None,
        }
    }

    /// Traffic to this service's VIPs goes through `waypoint`.
    pub fn waypoint(mut self, waypoint: Waypoint) -> Self {
        self.waypoint = Some(waypoint);
        self
    }

    pub fn load_balancer(mut self, lb: LoadBalancer) -> Self {
        self.load_balancer = Some(lb);
        self
    }
}

/// The whole local config file.
#[derive(Clone, Debug, Default)]
pub struct MeshConfig {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    /// `policies:`; none unless a test adds them.
    pub policies: Vec<Policy>,
}

impl MeshConfig {
    /// The standard mesh on the two-node topology: `client` (10.77.1.10) and `client2`
    /// (10.77.1.11) on n1; `server` (10.77.2.10) on n2, endpoint of service `server`
    /// (VIP 10.96.0.10, port 80 → `server_port`). The non-mesh pod 10.77.2.20 is not listed.
    pub fn standard(server_port: u16) -> Self {
        let service = Service::new("server", addr::SERVICE_VIP, &[(80, server_port)]);
        MeshConfig {
            workloads: vec![
                Workload::new("client", addr::CLIENT, "n1"),
                Workload::new("client2", addr::CLIENT2, "n1"),
                Workload::new("server", addr::SERVER, "n2")
                    .endpoint_of(&service, &[(80, server_port)]),
            ],
            services: vec![service],
            policies: Vec::new(),
        }
    }

    /// The workload called `name`, for tweaking (e.g. a different service account).
    pub fn workload_mut(&mut self, name: &str) -> &mut Workload {
        self.workloads
            .iter_mut()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name:?} in the config"))
    }

    /// Drops the workload called `name` (as a deleted pod leaves the mesh).
    pub fn remove_workload(&mut self, name: &str) {
        let before = self.workloads.len();
        self.workloads.retain(|w| w.name != name);
        assert!(
            self.workloads.len() < before,
            "no workload {name:?} in the config"
        );
    }

    pub fn with_workload(mut self, workload: Workload) -> Self {
        self.workloads.push(workload);
        self
    }

    /// Renders the YAML document.
    pub fn to_yaml(&self) -> String {
        let mut y = String::from("workloads:\n");
        if self.workloads.is_empty() {
            y = "workloads: []\n".into();
        }
        for w in &self.workloads {
            let _ = writeln!(y, "- uid: {}", quote(&w.uid()));
            let _ = writeln!(y, "  name: {}", quote(&w.name));
            let _ = writeln!(y, "  namespace: {}", quote(&w.namespace));
            let _ = writeln!(y, "  serviceAccount: {}", quote(&w.service_account));
            let mut ips = ip_list(&w.ips, "");
            for ip6 in &w.ips6 {
                if !ips.is_empty() {
                    ips.push_str(", ");
                }
                ips.push_str(&quote(&ip6.to_string()));
            }
            let _ = writeln!(y, "  workloadIps: [{ips}]");
            let _ = writeln!(y, "  protocol: {}", w.protocol.as_yaml());
            let _ = writeln!(y, "  node: {}", quote(&w.node));
            if !w.services.is_empty() {
                y.push_str("  services:\n");
                for (svc, ports) in &w.services {
                    let _ = writeln!(y, "    {}:", quote(svc));
                    for (port, target) in ports {
                        let _ = writeln!(y, "      {port}: {target}");
                    }
                }
            }
            if w.host_network {
                y.push_str("  networkMode: HostNetwork\n");
            }
            if !w.authorization_policies.is_empty() {
                let names: Vec<String> =
                    w.authorization_policies.iter().map(|p| quote(p)).collect();
                let _ = writeln!(y, "  authorizationPolicies: [{}]", names.join(", "));
            }
            if let Some(locality) = &w.locality {
                let _ = writeln!(y, "  locality: {}", locality.as_yaml());
            }
            if let Some(capacity) = w.capacity {
                let _ = writeln!(y, "  capacity: {capacity}");
            }
            if !w.healthy {
                y.push_str("  status: Unhealthy\n");
            }
            if !w.cluster_id.is_empty() {
                let _ = writeln!(y, "  clusterId: {}", quote(&w.cluster_id));
            }
            if !w.hostname.is_empty() {
                let _ = writeln!(y, "  hostname: {}", quote(&w.hostname));
            }
            if let Some(waypoint) = &w.waypoint {
                let _ = writeln!(y, "  waypoint: {}", waypoint.as_yaml());
            }
            if !w.network.is_empty() {
                let _ = writeln!(y, "  network: {}", quote(&w.network));
            }
            if let Some(gateway) = &w.network_gateway {
                let _ = writeln!(y, "  networkGateway: {}", gateway.as_yaml());
            }
        }
        if self.services.is_empty() {
            y.push_str("services: []\n");
        } else {
            y.push_str("services:\n");
        }
        for s in &self.services {
            let _ = writeln!(y, "- name: {}", quote(&s.name));
            let _ = writeln!(y, "  namespace: {}", quote(&s.namespace));
            let _ = writeln!(y, "  hostname: {}", quote(&s.hostname));
            let _ = writeln!(y, "  vips: [{}]", ip_list(&s.vips, "/"));
            y.push_str("  ports:\n");
            for (port, target) in &s.ports {
                let _ = writeln!(y, "    {port}: {target}");
            }
            if let Some(lb) = &s.load_balancer {
                lb.write_yaml(&mut y);
            }
            if !s.cidr_vips.is_empty() {
                let ranges: Vec<String> = s
                    .cidr_vips
                    .iter()
                    .map(|(ip, len)| format!("{{network: \"\", cidr: \"{ip}/{len}\"}}"))
                    .collect();
                let _ = writeln!(y, "  cidrVips: [{}]", ranges.join(", "));
            }
            if let Some(families) = s.ip_families {
                let _ = writeln!(y, "  ipFamilies: {families}");
            }
            if s.canonical {
                y.push_str("  canonical: true\n");
            }
            if let Some(waypoint) = &s.waypoint {
                let _ = writeln!(y, "  waypoint: {}", waypoint.as_yaml());
            }
        }
        if !self.policies.is_empty() {
            y.push_str("policies:\n");
            for p in &self.policies {
                p.write_yaml(&mut y);
            }
        }
        y
    }

    /// Writes the YAML document to `path` atomically (a temp file renamed over it), so a
    /// control plane watching the file never reads half of it.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("yaml.tmp");
        fs::write(&tmp, self.to_yaml())
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming onto {}", path.display()), e))
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn ip_list(ips: &[Ipv4Addr], prefix: &str) -> String {
    ips.iter()
        .map(|ip| quote(&format!("{prefix}{ip}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `<bin> generate-ca <dir>` and checks the four plug-in CA files exist.
pub fn generate_ca(bin: &Path, dir: &Path) -> Result<()> {
    let dir_s = dir.to_string_lossy();
    cmd::run(&bin.to_string_lossy(), &["generate-ca", &dir_s])?;
    for file in CA_FILES {
        if !dir.join(file).is_file() {
            return Err(Error::Invalid(format!(
                "`{} generate-ca {dir_s}` did not write {file}",
                bin.display()
            )));
        }
    }
    Ok(())
}

/// Where a tunnel gets its workloads and services.
#[derive(Clone, Copy)]
pub enum Mesh<'a> {
    /// `LOCAL_XDS_PATH=<file>` (a [`MeshConfig`] written to disk).
    File(&'a Path),
    /// `XDS_ADDRESS`: delta xDS from a running `nodetunnel-control`.
    Control(&'a ControlPlane),
}

/// Where a tunnel gets its CA.
#[derive(Clone, Copy)]
pub enum Ca<'a> {
    /// `LOCAL_CA_DIR=<dir>` (from [`generate_ca`]).
    Dir(&'a Path),
    /// `FAKE_CA=true`: the built-in test root, trusted by every FAKE_CA tunnel and by nothing
    /// else (a control plane's CA does not trust it).
    Fake,
    /// `CA_ADDRESS`: certificates from a running `nodetunnel-control` over gRPC.
    Control(&'a ControlPlane),
}

/// The environment of a dedicated-mode tunnel serving `node`. `PROXY_MODE=dedicated` is
/// explicit: the daemon's default is shared (in-pod), as in ztunnel.
pub fn tunnel_env(node: &str, mesh: Mesh<'_>, ca: Ca<'_>) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        ("PROXY_MODE".to_string(), "dedicated".to_string()),
        ("NODE_NAME".to_string(), node.to_string()),
        ("POD_NAME".to_string(), format!("nodetunnel-{node}")),
        ("POD_NAMESPACE".to_string(), "istio-system".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
        ("NO_COLOR".to_string(), "1".to_string()),
    ];
    match mesh {
        Mesh::File(config) => env.push(("LOCAL_XDS_PATH".into(), path(config))),
        Mesh::Control(cp) => {
            env.push(("XDS_ADDRESS".into(), cp.url()));
            env.push(("XDS_ROOT_CA".into(), path(&cp.root_cert())));
            env.push(("XDS_AUTH_TOKEN".into(), path(&cp.node_token_file(node))));
        }
    }
    match ca {
        Ca::Dir(dir) => env.push(("LOCAL_CA_DIR".into(), path(dir))),
        Ca::Fake => env.push(("FAKE_CA".into(), "true".into())),
        Ca::Control(cp) => {
            env.push(("CA_ADDRESS".into(), cp.url()));
            env.push(("CA_ROOT_CA".into(), path(&cp.root_cert())));
            env.push(("CA_AUTH_TOKEN".into(), path(&cp.node_token_file(node))));
        }
    }
    env
}

/// Sets `key=value` in `env`, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// The environment of a shared-mode (in-pod) tunnel serving `node`: [`tunnel_env`] with
/// `PROXY_MODE=shared`, plus `INPOD_UDS=<uds>` (the ZDS socket the CNI agent listens on).
pub fn shared_tunnel_env(
    node: &str,
    mesh: Mesh<'_>,
    ca: Ca<'_>,
    uds: &Path,
) -> Vec<(String, String)> {
    let mut env = tunnel_env(node, mesh, ca);
    set_env(&mut env, "PROXY_MODE", "shared");
    env.push(("INPOD_UDS".into(), uds.to_string_lossy().into_owned()));
    env
}

/// Borrows an owned environment as the `&[(&str, &str)]` that `start_tunnel` takes.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_config_renders_like_ztunnel_local_config() {
        let yaml = MeshConfig::standard(8080).to_yaml();
        assert!(yaml.starts_with("workloads:\n- uid: \"cluster1//v1/Pod/default/client\"\n"));
        assert!(yaml.contains("  serviceAccount: \"server\"\n"));
        assert!(
            yaml.contains("  workloadIps: [\"10.77.2.10\"]\n  protocol: HBONE\n  node: \"n2\"\n")
        );
        assert!(yaml.contains(
            "  services:\n    \"default/server.default.svc.cluster.local\":\n      80: 8080\n"
        ));
        assert!(yaml.contains("  vips: [\"/10.96.0.10\"]\n  ports:\n    80: 8080\n"));
        assert!(!yaml.contains("10.77.2.20"));
    }

    #[test]
    fn policies_render_in_the_local_config_form() {
        let mut cfg = MeshConfig::standard(8080);
        assert!(
            !cfg.to_yaml().contains("policies"),
            "no policies unless added"
        );
        let deny = Policy::deny("default", "deny-client").rule([[Match::default()
            .principal(StringMatch::exact("cluster.local/ns/default/sa/client"))
            .destination_port(8080)]]);
        let selected = Policy::allow("default", "only-this")
            .scope(PolicyScope::WorkloadSelector)
            .rule([
                [Match::default().source_ip("10.77.1.0/24")],
                [Match::default()],
            ])
            .dry_run();
        let server = cfg.workload_mut("server").clone().selected_by(&selected);
        *cfg.workload_mut("server") = server;
        cfg.policies = vec![deny, selected];
        let yaml = cfg.to_yaml();
        assert!(
            yaml.contains("  authorizationPolicies: [\"default/only-this\"]\n"),
            "{yaml}"
        );
        let policies = &yaml[yaml.find("policies:\n").expect("a policies list")..];
        assert_eq!(
            policies,
            "policies:\n\
             - name: \"deny-client\"\n  namespace: \"default\"\n  scope: Namespace\n  action: Deny\n\
             \x20 rules:\n  -\n    -\n      - {principals: [!Exact \"cluster.local/ns/default/sa/client\"], destinationPorts: [8080]}\n\
             - name: \"only-this\"\n  namespace: \"default\"\n  scope: WorkloadSelector\n  action: Allow\n\
             \x20 dryRun: true\n  rules:\n  -\n    -\n      - {sourceIps: [\"10.77.1.0/24\"]}\n    -\n      - {}\n"
        );
    }

    #[test]
    fn balancing_fields_render_in_the_local_config_form() {
        let mut cfg = MeshConfig::standard(8080);
        assert!(
            !cfg.to_yaml().contains("loadBalancer") && !cfg.to_yaml().contains("locality"),
            "none unless set"
        );
        cfg.services[0] = cfg.services[0]
            .clone()
            .load_balancer(LoadBalancer::failover(&[LbScope::Region, LbScope::Zone]).allow_all());
        let server = cfg
            .workload_mut("server")
            .clone()
            .locality(Locality::new("r1", "a", ""))
            .capacity(0)
            .unhealthy()
            .cluster_id("east");
        *cfg.workload_mut("server") = server;
        let yaml = cfg.to_yaml();
        assert!(
            yaml.contains(
                "  locality: {region: \"r1\", zone: \"a\", subzone: \"\"}\n  capacity: 0\n  status: Unhealthy\n  clusterId: \"east\"\n"
            ),
            "{yaml}"
        );
        assert!(
            yaml.ends_with(
                "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover, healthPolicy: AllowAll}\n"
            ),
            "{yaml}"
        );
        cfg.remove_workload("client2");
        assert!(!cfg.to_yaml().contains("client2"));
    }

    #[test]
    fn identities_follow_service_accounts() {
        let mut cfg = MeshConfig::standard(8080);
        cfg.workload_mut("server").service_account = "impostor".into();
        assert_eq!(
            cfg.workload_mut("server").identity(),
            "spiffe://cluster.local/ns/default/sa/impostor"
        );
    }
}
