//! The host side of probe handling, in the host's netns: the agent's own (a pod with
//! hostNetwork), or the one entered through the host's `/proc/1/ns/net` when the agent runs in
//! its own pod netns (Istio's chart default, `ALLOW_SWITCH_TO_HOST_NS=true`). Each tool then
//! runs on a short-lived thread inside it, so the agent's threads never change namespace.
//!
//! Kubelet probes come from a host socket to the pod IP; inside the pod they would look like any
//! node-originated traffic (kube-proxy forwards too) and be captured. So on the host, TCP from a
//! local socket (`-m owner --socket-exists`: forwarded packets have none) to an enrolled pod's IP
//! is SNATed to 169.254.7.127, which the in-pod rules let through. Enrolled pod IPs live in the
//! ipset `istio-inpod-probes-v4` (hash:ip, comment = pod uid), which the agent keeps in step
//! with enrollment. Names, address and rule as in Istio (`cni/pkg/iptables/iptables.go`
//! `AppendHostRules`, `cni/pkg/nodeagent/net.go` `addPodToHostNSIpset`).
//!
//! With IPv6 on (`AMBIENT_IPV6`), the same in the ip6tables nat table with the set
//! `istio-inpod-probes-v6` (hash:ip, family inet6) and the source
//! `fd16:9254:7127:1337:ffff:ffff:ffff:ffff` (Istio's `ipset.V6Name`, `HOST_PROBE_SNAT_IPV6`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

use super::family::{IpFamily, PROBE_SNAT_V4, PROBE_SNAT_V6};
use super::ipt::{self, Desired, SaveParseError, TableSpec};
use super::tools::{self, ToolError, Tools};

pub const PROBE_IPSET: &str = "istio-inpod-probes-v4";
pub const PROBE_IPSET_V6: &str = "istio-inpod-probes-v6";
pub(crate) const CHAIN_POSTROUTING: &str = "ISTIO_POSTRT";
const OWNED: &[&str] = &[CHAIN_POSTROUTING];
const PLACE: &str = "the agent's netns";
/// ipset's limit on comment length.
const MAX_COMMENT: usize = 255;

/// What went wrong with the host-side rules or the ipset.
#[derive(Debug, thiserror::Error)]
pub enum HostRulesError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("reading the host's nat table: {0}")]
    Save(SaveParseError),
    #[error("the host network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("pod IP {ip}: IPv6 probe SNAT is off (AMBIENT_IPV6=false)")]
    Ipv6Off { ip: IpAddr },
    #[error("pod uid {uid:?} cannot be an ipset comment: {why}")]
    BadUid { uid: String, why: &'static str },
    #[error("ipset {set} listed an entry this agent cannot read ({line:?}): {why}")]
    BadEntry {
        set: &'static str,
        line: String,
        why: &'static str,
    },
}

/// The probe SNAT, set up in the calling thread's netns. See the module docs.
#[derive(Debug, Clone)]
pub struct HostProbeSnat {
    tools: Tools,
    /// The host's netns when it is not the agent's own.
    host: Option<Arc<NetnsHandle>>,
    /// Also the IPv6 set and ip6tables rule.
    ipv6: bool,
}

impl HostProbeSnat {
    /// Creates the ipset (kept with its entries when it exists) and the `ISTIO_POSTRT` chain
    /// with its one rule and one jump from nat POSTROUTING. Idempotent.
    pub fn ensure() -> Result<HostProbeSnat, HostRulesError> {
        HostProbeSnat::ensure_with(Tools::default(), None, false)
    }

    /// [`ensure`](Self::ensure) for both families: also `istio-inpod-probes-v6` and the
    /// ip6tables rule.
    pub fn ensure_dual_stack() -> Result<HostProbeSnat, HostRulesError> {
        HostProbeSnat::ensure_with(Tools::default(), None, true)
    }

    /// [`ensure`](Self::ensure) in the netns at `host` (e.g. `/host/proc/1/ns/net`), entered
    /// for each tool run; `None`: the agent's own netns. `ipv6`: both families.
    pub fn ensure_in(host: Option<&Path>, ipv6: bool) -> Result<HostProbeSnat, HostRulesError> {
        let host = host.map(NetnsHandle::open).transpose()?.map(Arc::new);
        HostProbeSnat::ensure_with(Tools::default(), host, ipv6)
    }

    /// [`ensure`](Self::ensure) with explicit binaries.
    pub(crate) fn ensure_with(
        tools: Tools,
        host: Option<Arc<NetnsHandle>>,
        ipv6: bool,
    ) -> Result<HostProbeSnat, HostRulesError> {
        let snat = HostProbeSnat { tools, host, ipv6 };
        for family in snat.families() {
            // The set first: a rule naming a missing set is refused.
            let inet = match family {
                IpFamily::V4 => "inet",
                IpFamily::V6 => "inet6",
            };
            snat.ipset(&[
                "create",
                set_of(family),
                "hash:ip",
                "family",
                inet,
                "comment",
                "-exist",
            ])?;
            let saved = snat.read_nat(family)?;
            if let Some(input) = desired(family).plan(&saved) {
                snat.restore(family, &input)?;
            }
        }
        Ok(snat)
    }

    /// Whether pods' IPv6 addresses get probe entries too.
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    fn families(&self) -> Vec<IpFamily> {
        if self.ipv6 {
            vec![IpFamily::V4, IpFamily::V6]
        } else {
            vec![IpFamily::V4]
        }
    }

    /// The family of `ip` (IPv4-mapped counts as IPv4), refused when it is IPv6 and IPv6 is off.
    fn family_of(&self, ip: IpAddr) -> Result<(IpFamily, IpAddr), HostRulesError> {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => Ok((IpFamily::V4, v4)),
            v6 @ IpAddr::V6(_) if self.ipv6 => Ok((IpFamily::V6, v6)),
            IpAddr::V6(_) => Err(HostRulesError::Ipv6Off { ip }),
        }
    }

    /// Adds (or re-labels) the entry for `ip` with `uid` as its comment, in the set of its
    /// family. A reused IP's old entry is replaced, since the IP now belongs to the new pod.
    pub fn add_pod(&self, ip: IpAddr, uid: &str) -> Result<(), HostRulesError> {
        let (family, ip) = self.family_of(ip)?;
        check_uid(uid)?;
        let ip = ip.to_string();
        self.ipset(&["add", set_of(family), &ip, "comment", uid, "-exist"])?;
        Ok(())
    }

    /// Deletes the entry for `ip`; fine when there is none.
    pub fn remove_pod(&self, ip: IpAddr) -> Result<(), HostRulesError> {
        let (family, ip) = self.family_of(ip)?;
        let ip = ip.to_string();
        self.ipset(&["del", set_of(family), &ip, "-exist"])?;
        Ok(())
    }

    /// Deletes the entry for `ip` only while it still belongs to `uid`: when pod events arrive
    /// out of order (the IP's new pod added before the old one's removal), the new pod keeps its
    /// entry. Returns whether an entry was deleted.
    pub fn remove_pod_if_owned(&self, ip: IpAddr, uid: &str) -> Result<bool, HostRulesError> {
        let (_, ip) = self.family_of(ip)?;
        let owned = self
            .entries()?
            .iter()
            .any(|(entry_ip, comment)| *entry_ip == ip && comment == uid);
        if owned {
            self.remove_pod(ip)?;
        }
        Ok(owned)
    }

    /// Every entry of every set (both families with IPv6 on) as (ip, comment), e.g. to drop
    /// the stale ones at start.
    pub fn entries(&self) -> Result<Vec<(IpAddr, String)>, HostRulesError> {
        let mut all = Vec::new();
        for family in self.families() {
            let set = set_of(family);
            let text = self.ipset(&["save", set])?;
            all.extend(parse_entries(set, &text)?);
        }
        Ok(all)
    }

    /// Removes the jump, the chain and the ipset. Fine when they are already gone.
    pub fn uninstall(&self) -> Result<(), HostRulesError> {
        let nothing = Desired {
            owned: OWNED,
            tables: Vec::new(),
        };
        for family in self.families() {
            let saved = self.read_nat(family)?;
            if let Some(input) = nothing.plan(&saved) {
                self.restore(family, &input)?;
            }
        }
        // A set is destroyable only once no rule references it, hence last.
        let names = self.ipset(&["list", "-n"])?;
        for family in self.families() {
            let set = set_of(family);
            if names.lines().any(|n| n.trim() == set) {
                self.ipset(&["destroy", set])?;
            }
        }
        Ok(())
    }

    fn ipset(&self, args: &[&str]) -> Result<String, HostRulesError> {
        self.run(&self.tools.ipset, args, None)
    }

    /// Runs a tool in the host's netns.
    fn run(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, HostRulesError> {
        match &self.host {
            None => Ok(tools::run(program, args, stdin, PLACE)?),
            Some(host) => {
                let place = format!("the host's {}", tools::in_netns(host.path()));
                Ok(host.run(|| tools::run(program, args, stdin, &place))??)
            }
        }
    }

    fn read_nat(&self, family: IpFamily) -> Result<ipt::Saved, HostRulesError> {
        // Only nat: the host's full ruleset can be large (kube-proxy) and ours lives in nat.
        let text = self.run(family.save(&self.tools), &["-t", "nat"], None)?;
        ipt::parse_save(&text).map_err(HostRulesError::Save)
    }

    fn restore(&self, family: IpFamily, input: &str) -> Result<(), HostRulesError> {
        tracing::debug!(?family, %input, "iptables-restore --noflush (host)");
        self.run(
            family.restore(&self.tools),
            &["--noflush", "--wait"],
            Some(input),
        )?;
        Ok(())
    }
}

fn set_of(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => PROBE_IPSET,
        IpFamily::V6 => PROBE_IPSET_V6,
    }
}

fn desired(family: IpFamily) -> Desired {
    let (set, source) = match family {
        IpFamily::V4 => (PROBE_IPSET, PROBE_SNAT_V4.to_string()),
        IpFamily::V6 => (PROBE_IPSET_V6, PROBE_SNAT_V6.to_string()),
    };
    Desired {
        owned: OWNED,
        tables: vec![TableSpec {
            table: "nat",
            chains: vec![CHAIN_POSTROUTING],
            jumps: vec![("POSTROUTING", CHAIN_POSTROUTING)],
            // Spelled as iptables-save prints it (`-p tcp` moves first).
            rules: vec![(
                CHAIN_POSTROUTING,
                format!(
                    "-p tcp -m owner --socket-exists -m set --match-set {set} dst \
                     -j SNAT --to-source {source}"
                ),
            )],
        }],
    }
}

/// The `iptables-restore` input [`HostProbeSnat::ensure`] applies on a host without it.
pub fn render() -> String {
    desired(IpFamily::V4).fresh_input()
}

/// The `ip6tables-restore` input [`HostProbeSnat::ensure_dual_stack`] adds on a host without it.
pub fn render_v6() -> String {
    desired(IpFamily::V6).fresh_input()
}

fn check_uid(uid: &str) -> Result<(), HostRulesError> {
    let why = if uid.is_empty() {
        "empty"
    } else if uid.len() > MAX_COMMENT {
        "longer than 255 bytes"
    } else if uid.chars().any(|c| c == '"' || c.is_control()) {
        "contains a quote or a control character"
    } else {
        return Ok(());
    };
    Err(HostRulesError::BadUid {
        uid: uid.to_string(),
        why,
    })
}

/// Reads `add <set> <ip> [comment "<text>"] …` lines of `ipset save`.
fn parse_entries(set: &'static str, text: &str) -> Result<Vec<(IpAddr, String)>, HostRulesError> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("add ") else {
            continue; // the `create` line
        };
        let bad = |why| HostRulesError::BadEntry {
            set,
            line: line.to_string(),
            why,
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(_set), Some(ip)) = (parts.next(), parts.next()) else {
            return Err(bad("no address"));
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
        let options = parts.next().unwrap_or("");
        let comment = match options.find("comment \"") {
            None => String::new(),
            Some(at) => {
                let quoted = &options[at + "comment \"".len()..];
                let end = quoted
                    .find('"')
                    .ok_or_else(|| bad("unterminated comment"))?;
                quoted[..end].to_string()
            }
        };
        entries.push((ip, comment));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
