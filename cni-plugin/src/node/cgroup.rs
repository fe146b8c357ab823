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
mod tests {
    use super::pod_uid_from_cgroup;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";

    fn uid(text: &str) -> Option<String> {
        pod_uid_from_cgroup(text)
    }

    #[test]
    fn cgroupfs_driver_v1_all_hierarchies() {
        let text = "\
12:pids:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961
11:memory:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961
1:name=systemd:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961
";
        assert_eq!(uid(text).as_deref(), Some(UID));
    }

    #[test]
    fn systemd_driver_v2_containerd_and_crio() {
        let containerd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope\n";
        assert_eq!(uid(containerd).as_deref(), Some(UID));
        let crio = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice/crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope\n";
        assert_eq!(
            uid(crio).as_deref(),
            Some("72f7f152-440c-66ac-9084-e0fc1d8a910c")
        );
        // Guaranteed-QoS pods sit right under kubepods.slice.
        let guaranteed = "0::/kubepods.slice/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-abc.scope";
        assert_eq!(uid(guaranteed).as_deref(), Some(UID));
    }

    #[test]
    fn systemd_driver_v1_with_colon_separated_name() {
        let text = "5:cpu,cpuacct:/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2";
        assert_eq!(
            uid(text).as_deref(),
            Some("72f7f152-440c-66ac-9084-e0fc1d8a910c")
        );
    }

    #[test]
    fn nested_and_namespaced_paths() {
        let kind = "0::/docker/8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e/aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934";
        assert_eq!(
            uid(kind).as_deref(),
            Some("daa5c7ee-3484-4533-af39-3591564fd03e")
        );
        let namespaced = "0::/../../pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa";
        assert_eq!(uid(namespaced).as_deref(), Some(UID));
    }

    #[test]
    fn pod_element_at_the_end_and_uppercase_hex() {
        assert_eq!(
            uid("0::/ntt1-kubepods/pod2C48913C-B29F-11E7-9350-020968147796").as_deref(),
            Some(UID)
        );
        assert_eq!(
            uid("0::/x/pod2c48913cb29f11e79350020968147796/").as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn no_pod_means_none() {
        for text in [
            "",
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope\n",
            "0::/kubepods/burstable/pod1234/abc\n",
            // "pod" must follow punctuation, and the uid must end at punctuation.
            "0::/kubepods/mypod2c48913c-b29f-11e7-9350-020968147796/abc\n",
            "0::/kubepods/pod2c48913c-b29f-11e7-9350-020968147796ff/abc\n",
            "garbage without colons\n",
        ] {
            assert_eq!(uid(text), None, "{text:?}");
        }
    }

    #[test]
    fn two_different_pods_is_ambiguous() {
        let text = "\
4:pids:/kubepods/pod11111111-b29f-11e7-9350-020968147796/abc
0::/kubepods/pod22222222-b29f-11e7-9350-020968147796/abc
";
        assert_eq!(uid(text), None);
    }
}
