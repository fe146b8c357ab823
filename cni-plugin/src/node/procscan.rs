//! Finding the netns of a pod that is already running, for pods the agent did not see through
//! a CNI ADD (it was down, or the pod predates enrollment).
//!
//! As Istio's agent does (`cni/pkg/nodeagent/podcgroupns_linux.go`; docs/contracts.md, "CNI
//! plugin ↔ node agent", "Finding running pods"): walk `<proc>/<pid>/`, skip processes in the
//! host's netns (pid 1's) and the agent's own, read the pod uid from `<pid>/cgroup`, and trust
//! the pairing only when one of the pod's IPs sits on an interface inside that netns — a process tied to pod A by its cgroup may be
//! visiting pod B's netns, and must not get pod A enrolled there.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nodetunnel_base::netns::{NetnsHandle, NetnsId};

pub use super::cgroup::pod_uid_from_cgroup;

/// Failures of the scan as a whole; a single process that vanishes or cannot be read midway
/// is skipped, not an error.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("listing processes in {path}: {source}")]
    ListProc { path: PathBuf, source: io::Error },
    #[error("identifying the host's netns via {path} (and the agent's own is not in this proc either): {source}")]
    HostNetns { path: PathBuf, source: io::Error },
}

/// One pass over `proc_root` (the host's /proc): for each pod uid (from the processes'
/// cgroups), the distinct network namespaces its processes are in, the host's netns (pid 1's)
/// and the agent's own left out. Reading
/// every process's cgroup is the expensive part, so an agent looking for many pods at once
/// (its first sync, a retry round) scans once and asks the index per pod.
#[derive(Debug, Default)]
pub struct ProcIndex {
    /// uid → (a `<pid>/ns/net` path, the netns it pointed to when scanned).
    by_uid: HashMap<String, Vec<(PathBuf, NetnsId)>>,
}

impl ProcIndex {
    pub fn scan(proc_root: &Path) -> Result<ProcIndex, ScanError> {
        // Left out: the host's netns, pid 1's, as Istio's finder takes it (`statHostNetns`),
        // and the agent's own. Under the chart the agent has its own netns, and in a proc of
        // a pid namespace it is not in, `self` dangles; where pid 1 cannot be looked into
        // (a sandboxed test machine), `self` is the host side. One of them must be readable.
        let host_path = proc_root.join("1/ns/net");
        let host = NetnsId::of_path(&host_path);
        let own = NetnsId::of_path(&proc_root.join("self/ns/net")).ok();
        let host = match (host, own) {
            (Ok(host), _) => Some(host),
            (Err(_), Some(_)) => None,
            (Err(source), None) => {
                return Err(ScanError::HostNetns {
                    path: host_path,
                    source,
                })
            }
        };
        let entries = fs::read_dir(proc_root).map_err(|source| ScanError::ListProc {
            path: proc_root.to_path_buf(),
            source,
        })?;
        let mut index = ProcIndex::default();
        let mut seen: HashSet<NetnsId> = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let pid_dir = entry.path();
            let netns_path = pid_dir.join("ns/net");
            let Ok(id) = NetnsId::of_path(&netns_path) else {
                continue; // gone, or a kernel thread we may not look into
            };
            if Some(id) == host || Some(id) == own || seen.contains(&id) {
                continue;
            }
            let Ok(cgroup) = fs::read_to_string(pid_dir.join("cgroup")) else {
                continue;
            };
            let Some(uid) = pod_uid_from_cgroup(&cgroup) else {
                continue;
            };
            seen.insert(id);
            index.by_uid.entry(uid).or_default().push((netns_path, id));
        }
        Ok(index)
    }

    /// The netns of pod `uid` holding one of `pod_ips`; `None` if the scan saw none —
    /// including when `pod_ips` is empty, as ownership cannot be confirmed then (Istio defers
    /// such pods too). The first confirmed netns wins: every process of a pod shares it.
    pub fn find(&self, uid: &str, pod_ips: &[IpAddr]) -> Option<NetnsHandle> {
        let wanted_ips: Vec<IpAddr> = pod_ips.iter().map(|ip| ip.to_canonical()).collect();
        let candidates = self.by_uid.get(&uid.to_ascii_lowercase())?;
        for (netns_path, id) in candidates {
            let netns = match NetnsHandle::open(netns_path) {
                // The pid may have been reused since the scan.
                Ok(netns) if netns.id() == *id => netns,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(path = %netns_path.display(), error = %e, "pod process vanished since the scan");
                    continue;
                }
            };
            match netns.addresses() {
                Ok(addrs) if addrs.iter().any(|a| wanted_ips.contains(&a.to_canonical())) => {
                    return Some(netns);
                }
                Ok(_) => tracing::warn!(
                    uid,
                    netns = %netns_path.display(),
                    "process of the pod sits in a netns without any of the pod's IPs; not pairing"
                ),
                // Fail closed: an unverified netns is never paired.
                Err(e) => {
                    tracing::warn!(uid, error = %e, "could not list the addresses in a pod's netns")
                }
            }
        }
        None
    }
}
