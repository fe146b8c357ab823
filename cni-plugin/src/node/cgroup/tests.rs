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
