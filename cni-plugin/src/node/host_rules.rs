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
//! IPv4 only for now; `istio-inpod-probes-v6` and the `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`
//! source are a follow-up.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

use super::ipt::{self, Desired, SaveParseError, TableSpec};
use super::tools::{self, ToolError, Tools};

pub const PROBE_IPSET: &str = "istio-inpod-probes-v4";
pub(crate) const PROBE_SNAT_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
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
    #[error("pod IP {ip}: only IPv4 is supported for now")]
    NotIpv4 { ip: IpAddr },
    #[error("pod uid {uid:?} cannot be an ipset comment: {why}")]
    BadUid { uid: String, why: &'static str },
    #[error("ipset {PROBE_IPSET} listed an entry this agent cannot read ({line:?}): {why}")]
    BadEntry { line: String, why: &'static str },
}

/// The probe SNAT, set up in the calling thread's netns. See the module docs.
#[derive(Debug, Clone)]
pub struct HostProbeSnat {
    tools: Tools,
    /// The host's netns when it is not the agent's own.
    host: Option<Arc<NetnsHandle>>,
}

impl HostProbeSnat {
    /// Creates the ipset (kept with its entries when it exists) and the `ISTIO_POSTRT` chain
    /// with its one rule and one jump from nat POSTROUTING. Idempotent.
    pub fn ensure() -> Result<HostProbeSnat, HostRulesError> {
        HostProbeSnat::ensure_with(Tools::default(), None)
    }

    /// [`ensure`](Self::ensure) in the netns at `host` (e.g. `/host/proc/1/ns/net`), entered
    /// for each tool run; `None`: the agent's own netns.
    pub fn ensure_in(host: Option<&Path>) -> Result<HostProbeSnat, HostRulesError> {
        let host = host.map(NetnsHandle::open).transpose()?.map(Arc::new);
        HostProbeSnat::ensure_with(Tools::default(), host)
    }

    /// [`ensure`](Self::ensure) with explicit binaries.
    pub(crate) fn ensure_with(
        tools: Tools,
        host: Option<Arc<NetnsHandle>>,
    ) -> Result<HostProbeSnat, HostRulesError> {
        let snat = HostProbeSnat { tools, host };
        // The set first: a rule naming a missing set is refused.
        snat.ipset(&[
            "create",
            PROBE_IPSET,
            "hash:ip",
            "family",
            "inet",
            "comment",
            "-exist",
        ])?;
        let saved = snat.read_nat()?;
        if let Some(input) = desired().plan(&saved) {
            snat.restore(&input)?;
        }
        Ok(snat)
    }

    /// Adds (or re-labels) the entry for `ip` with `uid` as its comment. A reused IP's old entry
    /// is replaced, since the IP now belongs to the new pod.
    pub fn add_pod(&self, ip: IpAddr, uid: &str) -> Result<(), HostRulesError> {
        let ip = ipv4(ip)?.to_string();
        check_uid(uid)?;
        self.ipset(&["add", PROBE_IPSET, &ip, "comment", uid, "-exist"])?;
        Ok(())
    }

    /// Deletes the entry for `ip`; fine when there is none.
    pub fn remove_pod(&self, ip: IpAddr) -> Result<(), HostRulesError> {
        let ip = ipv4(ip)?.to_string();
        self.ipset(&["del", PROBE_IPSET, &ip, "-exist"])?;
        Ok(())
    }

    /// Deletes the entry for `ip` only while it still belongs to `uid`: when pod events arrive
    /// out of order (the IP's new pod added before the old one's removal), the new pod keeps its
    /// entry. Returns whether an entry was deleted.
    pub fn remove_pod_if_owned(&self, ip: IpAddr, uid: &str) -> Result<bool, HostRulesError> {
        let ip4 = IpAddr::V4(ipv4(ip)?);
        let owned = self
            .entries()?
            .iter()
            .any(|(entry_ip, comment)| *entry_ip == ip4 && comment == uid);
        if owned {
            self.remove_pod(ip4)?;
        }
        Ok(owned)
    }

    /// Every entry as (ip, comment), e.g. to drop the stale ones at start.
    pub fn entries(&self) -> Result<Vec<(IpAddr, String)>, HostRulesError> {
        let text = self.ipset(&["save", PROBE_IPSET])?;
        parse_entries(&text)
    }

    /// Removes the jump, the chain and the ipset. Fine when they are already gone.
    pub fn uninstall(&self) -> Result<(), HostRulesError> {
        let nothing = Desired {
            owned: OWNED,
            tables: Vec::new(),
        };
        let saved = self.read_nat()?;
        if let Some(input) = nothing.plan(&saved) {
            self.restore(&input)?;
        }
        // The set is destroyable only once no rule references it, hence last.
        let names = self.ipset(&["list", "-n"])?;
        if names.lines().any(|n| n.trim() == PROBE_IPSET) {
            self.ipset(&["destroy", PROBE_IPSET])?;
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

    fn read_nat(&self) -> Result<ipt::Saved, HostRulesError> {
        // Only nat: the host's full ruleset can be large (kube-proxy) and ours lives in nat.
        let text = self.run(&self.tools.iptables_save, &["-t", "nat"], None)?;
        ipt::parse_save(&text).map_err(HostRulesError::Save)
    }

    fn restore(&self, input: &str) -> Result<(), HostRulesError> {
        tracing::debug!(%input, "iptables-restore --noflush (host)");
        self.run(
            &self.tools.iptables_restore,
            &["--noflush", "--wait"],
            Some(input),
        )?;
        Ok(())
    }
}

fn desired() -> Desired {
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
                    "-p tcp -m owner --socket-exists -m set --match-set {PROBE_IPSET} dst \
                     -j SNAT --to-source {PROBE_SNAT_SOURCE}"
                ),
            )],
        }],
    }
}

/// The `iptables-restore` input [`HostProbeSnat::ensure`] applies on a host without it.
pub fn render() -> String {
    desired().fresh_input()
}

fn ipv4(ip: IpAddr) -> Result<Ipv4Addr, HostRulesError> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(HostRulesError::NotIpv4 { ip }),
    }
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
fn parse_entries(text: &str) -> Result<Vec<(IpAddr, String)>, HostRulesError> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("add ") else {
            continue; // the `create` line
        };
        let bad = |why| HostRulesError::BadEntry {
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
