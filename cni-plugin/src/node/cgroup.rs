//! The pod uid in a process's `/proc/<pid>/cgroup`.
//!
//! Kubelet names a pod's cgroup after its uid, `pod<uid>`, with the uid's dashes kept
//! (cgroupfs driver: `/kubepods/burstable/pod2c48913c-b29f-…/<container>`) or turned into
//! underscores inside a systemd slice name
//! (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_….slice/cri-containerd-<id>.scope`).
//! The element can sit below a prefix (kind/nested runtimes, `/../..` under cgroup namespaces)
//! and appear on any line: one `0::` line on cgroup v2, one per hierarchy on v1. Istio's agent
//! (`cni/pkg/nodeagent/podcgroupns_linux.go`, after SPIRE) accepts `pod` + 8-4-4-4-12 hex
//! digits with optional punctuation between groups, after a punctuation character, and maps
//! the punctuation to dashes; it refuses processes whose lines name two different pods. This
//! parser follows those rules, and also accepts the pod element at the end of the path (a
//! process directly in the pod's cgroup).

/// The canonical (lowercase, dashed) pod uid named in a `/proc/<pid>/cgroup` text, or `None`
/// when no line names a pod or lines name different pods.
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in text.lines() {
        // hierarchy-id:controllers:path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for uid in uids_in_path(path) {
            match &found {
                None => found = Some(uid),
                Some(f) if *f == uid => {}
                Some(_) => return None,
            }
        }
    }
    found
}

fn uids_in_path(path: &str) -> Vec<String> {
    let bytes = path.as_bytes();
    let mut uids = Vec::new();
    let mut i = 0;
    while let Some(offset) = path[i..].find("pod") {
        let at = i + offset;
        i = at + 3;
        if at > 0 && !bytes[at - 1].is_ascii_punctuation() {
            continue; // e.g. the "pod" inside "kubepods"
        }
        if let Some((uid, end)) = uid_at(bytes, at + 3) {
            if end == bytes.len() || bytes[end].is_ascii_punctuation() {
                uids.push(uid);
                i = end;
            }
        }
    }
    uids
}

/// Parses 8-4-4-4-12 hex digits at `start`, each group optionally preceded by one punctuation
/// character; returns the dashed lowercase uid and the index after it.
fn uid_at(bytes: &[u8], start: usize) -> Option<(String, usize)> {
    let mut uid = String::with_capacity(36);
    let mut pos = start;
    for (n, len) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if n > 0 {
            uid.push('-');
            if bytes.get(pos).is_some_and(u8::is_ascii_punctuation) {
                pos += 1;
            }
        }
        let group = bytes.get(pos..pos + len)?;
        if !group.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        uid.extend(group.iter().map(|b| char::from(b.to_ascii_lowercase())));
        pos += len;
    }
    Some((uid, pos))
}

#[cfg(test)]
mod tests;
