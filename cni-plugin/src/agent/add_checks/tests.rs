use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(path: &str) -> NetnsId {
    NetnsId::of_path(std::path::Path::new(path)).unwrap()
}

#[test]
fn the_pod_must_be_scheduled_on_this_node() {
    assert_eq!(on_this_node(Some("n1"), "n1"), Ok(()));
    assert_eq!(
        on_this_node(Some("n2"), "n1"),
        Err(AddRefused::OtherNode {
            scheduled: "n2".into(),
            this: "n1".into()
        })
    );
    assert_eq!(on_this_node(None, "n1"), Err(AddRefused::Unscheduled));
    assert_eq!(on_this_node(Some(""), "n1"), Err(AddRefused::Unscheduled));
}

#[test]
fn the_netns_must_not_be_the_hosts_or_the_agents_and_must_hold_every_ip() {
    // Real namespace ids: this process's netns stands for "host", and its user namespace
    // file (a different nsfs inode) for the pod's.
    let here = id("/proc/self/ns/net");
    let pod = NetnsId::of_path(std::path::Path::new("/proc/self/ns/user")).unwrap();
    let held = || Ok(vec![ip("10.0.0.5"), ip("fd00::5")]);
    assert_eq!(
        netns_is_the_pods(here, Some(here), None, &[ip("10.0.0.5")], held()),
        Err(AddRefused::HostNetns)
    );
    assert_eq!(
        netns_is_the_pods(here, None, Some(here), &[ip("10.0.0.5")], held()),
        Err(AddRefused::AgentNetns)
    );
    assert_eq!(
        netns_is_the_pods(
            pod,
            Some(here),
            Some(here),
            &[ip("10.0.0.5"), ip("fd00::5")],
            held()
        ),
        Ok(())
    );
    // An IPv4-mapped form of a held address is the same address.
    assert_eq!(
        netns_is_the_pods(pod, None, None, &[ip("::ffff:10.0.0.5")], held()),
        Ok(())
    );
    assert!(matches!(
        netns_is_the_pods(pod, None, None, &[ip("10.0.0.5"), ip("10.0.0.6")], held()),
        Err(AddRefused::IpNotInNetns { ip: bad, .. }) if bad == ip("10.0.0.6")
    ));
    assert_eq!(
        netns_is_the_pods(pod, None, None, &[], held()),
        Err(AddRefused::NoIps)
    );
    assert_eq!(
        netns_is_the_pods(pod, None, None, &[ip("10.0.0.5")], Err("gone".into())),
        Err(AddRefused::Unlisted("gone".into()))
    );
}
