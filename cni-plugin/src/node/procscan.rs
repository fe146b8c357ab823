//! Finding the netns of a pod that is already running, for pods the agent did not see through
//! a CNI ADD (it was down, or the pod predates enrollment).
//!
//! As Istio's agent does (`cni/pkg/nodeagent/podcgroupns_linux.go`, CONTRACTS.md "Agent finds
//! netns of running pods"): walk `<proc>/<pid>/`, skip processes in the agent's own (host)
//! netns, read the pod uid from `<pid>/cgroup`, and trust the pairing only when one of the pod's
//! IPs sits on an interface inside that netns — a process tied to pod A by its cgroup may be
//! visiting pod B's netns, and must not get pod A enrolled there.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use super::cgroup::pod_uid_from_cgroup;
use super::netns::{path_id, NetnsId, PodNetns};

/// Failures of the scan as a whole; a single process that vanishes or cannot be read midway
/// is skipped, not an error.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("listing processes in {path}: {source}")]
    ListProc { path: PathBuf, source: io::Error },
    #[error("identifying the agent's own netns via {path}: {source}")]
    OwnNetns { path: PathBuf, source: io::Error },
}

/// Finds the netns of the running pod `uid` by scanning `proc_root` (`/proc`; the host's when
/// the agent runs with hostPID). `None` when no process of the pod holds one of `pod_ips` in
/// its netns — including when `pod_ips` is empty, as ownership cannot be confirmed then (Istio
/// defers such pods too). The first confirmed netns wins: every process of a pod shares it.
pub fn find_pod_netns(
    proc_root: &Path,
    uid: &str,
    pod_ips: &[IpAddr],
) -> Result<Option<PodNetns>, ScanError> {
    if pod_ips.is_empty() {
        return Ok(None);
    }
    let wanted_uid = uid.to_ascii_lowercase();
    let wanted_ips: Vec<IpAddr> = pod_ips.iter().map(|ip| ip.to_canonical()).collect();
    let own_path = proc_root.join("self/ns/net");
    let own = path_id(&own_path).map_err(|source| ScanError::OwnNetns {
        path: own_path,
        source,
    })?;
    let entries = fs::read_dir(proc_root).map_err(|source| ScanError::ListProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    // Namespaces already entered and found without the pod's IPs: not worth entering again
    // for the pod's next process.
    let mut without_ips: HashSet<NetnsId> = HashSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let pid_dir = entry.path();
        let netns_path = pid_dir.join("ns/net");
        let Ok(id) = path_id(&netns_path) else {
            continue; // gone, or a kernel thread we may not look into
        };
        if id == own || without_ips.contains(&id) {
            continue;
        }
        let Ok(cgroup) = fs::read_to_string(pid_dir.join("cgroup")) else {
            continue;
        };
        if pod_uid_from_cgroup(&cgroup).as_deref() != Some(wanted_uid.as_str()) {
            continue;
        }
        let netns = match PodNetns::open(&netns_path) {
            // The pid may have been reused between the stat and the open.
            Ok(netns) if netns.id() == id => netns,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(pid, error = %e, "pod process vanished during the scan");
                continue;
            }
        };
        match netns.addresses() {
            Ok(addrs) if addrs.iter().any(|a| wanted_ips.contains(&a.to_canonical())) => {
                return Ok(Some(netns));
            }
            Ok(_) => {
                tracing::warn!(
                    pid,
                    uid,
                    netns = %netns_path.display(),
                    "process of the pod sits in a netns without any of the pod's IPs; not pairing"
                );
                without_ips.insert(id);
            }
            Err(e) => {
                // Fail closed: an unverified netns is never paired.
                tracing::warn!(pid, uid, error = %e, "could not list the addresses in a pod's netns");
            }
        }
    }
    Ok(None)
}
