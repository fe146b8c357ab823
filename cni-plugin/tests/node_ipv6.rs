//! The IPv6 half of the node programming against the real thing (ip6tables, `ip -6` rules and
//! routes, ipset `hash:ip family inet6`, real TCP over IPv6 in network namespaces). Needs root;
//! with `CI=true` a machine that cannot run these fails them instead of skipping.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
use nix::sys::time::TimeVal;
use nodetunnel_base::netns::NetnsHandle;
use nodetunnel_cni::node::family::PROBE_SNAT_V6;
use nodetunnel_cni::node::host_rules::{HostProbeSnat, PROBE_IPSET_V6};
use nodetunnel_cni::node::inpod_rules::{self, RuleOptions};
use nodetunnel_testbed::eventually::wait_until;
use nodetunnel_testbed::netns::unique_prefix;
use nodetunnel_testbed::{namespaces_available, Netns};

const DEADLINE: Duration = Duration::from_secs(10);
const POD: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 1);
const WORLD: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 2);

const V6_ON: RuleOptions = RuleOptions {
    dns_capture: false,
    bypass_inbound: false,
    ipv6: true,
};

/// Istio's IPv6 golden rules (`cni/pkg/iptables/testdata/default_ipv6.golden` without DNS
/// capture, with the chart's probe source), as Istio writes them, not as nodetunnel renders
/// them.
const ISTIO_V6_RULES: &[(&str, &str)] = &[
    ("mangle", "-A PREROUTING -j ISTIO_PRERT"),
    ("mangle", "-A OUTPUT -j ISTIO_OUTPUT"),
    ("mangle", "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"),
    ("mangle", "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    ("nat", "-A OUTPUT -j ISTIO_OUTPUT"),
    ("nat", "-A PREROUTING -j ISTIO_PRERT"),
    ("nat", "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff -p tcp -m tcp -j ACCEPT"),
    ("nat", "-A ISTIO_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff -p tcp -m tcp -j ACCEPT"),
    ("nat", "-A ISTIO_PRERT ! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"),
    ("nat", "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT"),
    ("nat", "-A ISTIO_OUTPUT ! -d ::1/128 -o lo -j ACCEPT"),
    ("nat", "-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"),
];

fn netns(suffix: &str) -> Netns {
    Netns::create(&format!("{}-{suffix}", unique_prefix())).expect("creating a netns")
}

fn open(ns: &Netns) -> NetnsHandle {
    NetnsHandle::open(&ns.path()).expect("opening the netns")
}

/// The `ISTIO_*` lines of `ip6tables-save` (declarations without counters), with their table.
fn istio_v6(ns: &Netns) -> Vec<String> {
    let text = ns.exec("ip6tables-save", &[]).expect("ip6tables-save");
    let mut table = "";
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if line.starts_with(":ISTIO_") {
            let decl: Vec<&str> = line.split_whitespace().take(2).collect();
            lines.push(format!("{table} {}", decl.join(" ")));
        } else if line.starts_with("-A ") && line.contains("ISTIO_") {
            lines.push(format!("{table} {line}"));
        }
    }
    lines
}

/// Istio's rules restored into a scratch netns with `ip6tables-restore` and read back.
fn istio_v6_state() -> Vec<String> {
    let scratch = netns("ref6");
    let mut input = String::new();
    for table in ["mangle", "nat"] {
        input.push_str(&format!(
            "*{table}\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n"
        ));
        for (_, rule) in ISTIO_V6_RULES.iter().filter(|(t, _)| *t == table) {
            input.push_str(rule);
            input.push('\n');
        }
        input.push_str("COMMIT\n");
    }
    nodetunnel_testbed::cmd::run_with_stdin(
        "ip",
        &[
            "netns",
            "exec",
            scratch.name(),
            "ip6tables-restore",
            "--noflush",
        ],
        &input,
    )
    .expect("restoring Istio's IPv6 rules");
    istio_v6(&scratch)
}

fn v6_rule_present(ns: &Netns) -> bool {
    ns.ip(&["-6", "rule", "show"])
        .unwrap()
        .lines()
        .any(|l| l.starts_with("32764:") && l.trim_end().ends_with("fwmark 0x111/0xfff lookup 100"))
}

fn v6_table_100(ns: &Netns) -> String {
    ns.ip(&["-6", "route", "show", "table", "100"])
        .unwrap_or_default()
}

/// A pod netns and a "world" netns joined by a veth, `fd50::1` ⇄ `fd50::2` (no DAD, so the
/// addresses are usable at once).
fn pod_and_world() -> (Netns, Netns) {
    let pod = netns("pod6");
    let world = netns("world6");
    pod.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        world.name(),
    ])
    .unwrap();
    for (ns, dev, ip) in [(&pod, "veth0", POD), (&world, "veth1", WORLD)] {
        ns.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")],
        )
        .unwrap();
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            dev,
            "nodad",
        ])
        .unwrap();
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    (pod, world)
}

/// A TCP connection over IPv6 from the calling thread's netns, marked with `mark` when given.
fn connect6(dst: SocketAddrV6, mark: Option<u32>) -> io::Result<TcpStream> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(mark) = mark {
        socket::setsockopt(&fd, sockopt::Mark, &mark)?;
    }
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(10, 0))?;
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn6::from(dst),
    )?;
    Ok(TcpStream::from(fd))
}

fn accept_one(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let mut got = None;
    wait_until(DEADLINE, || match listener.accept() {
        Ok(conn) => {
            got = Some(conn);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    });
    got
}

fn nothing_pending(listener: &TcpListener) -> bool {
    matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn listen(ns: &NetnsHandle, addr: &str) -> TcpListener {
    let l = ns
        .run(|| TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    l
}

#[test]
fn ipv6_rules_are_istios_idempotent_checked_and_removable() {
    if !namespaces_available("ipv6_rules_are_istios_idempotent_checked_and_removable") {
        return;
    }
    let ns = netns("rules6");
    let pod = open(&ns);
    assert!(!inpod_rules::is_applied_as(&pod, &V6_ON).unwrap());
    inpod_rules::apply(&pod, &V6_ON).unwrap();
    let applied = istio_v6(&ns);
    assert_eq!(applied, istio_v6_state(), "the IPv6 set is Istio's");
    assert!(v6_rule_present(&ns), "{}", ns.ip(&["-6", "rule"]).unwrap());
    assert!(
        v6_table_100(&ns).contains("local default dev lo"),
        "{}",
        v6_table_100(&ns)
    );
    // The IPv4 set is there too, and the whole reads as applied.
    let v4 = ns.exec("iptables-save", &[]).unwrap();
    assert!(
        v4.contains(
            "! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
        ),
        "{v4}"
    );
    assert!(inpod_rules::is_applied_as(&pod, &V6_ON).unwrap());
    assert!(inpod_rules::is_applied(&pod).unwrap());

    inpod_rules::apply(&pod, &V6_ON).unwrap();
    assert_eq!(istio_v6(&ns), applied, "applying twice leaves one copy");

    // A flushed IPv6 chain (or a lost IPv6 route) is seen, and repaired by applying again.
    ns.exec("ip6tables", &["-t", "nat", "-F", "ISTIO_OUTPUT"])
        .unwrap();
    assert!(!inpod_rules::is_applied_as(&pod, &V6_ON).unwrap());
    inpod_rules::apply(&pod, &V6_ON).unwrap();
    assert_eq!(istio_v6(&ns), applied);
    ns.ip(&["-6", "route", "flush", "table", "100"]).unwrap();
    assert!(!inpod_rules::is_applied_as(&pod, &V6_ON).unwrap());
    inpod_rules::apply(&pod, &V6_ON).unwrap();
    assert!(inpod_rules::is_applied_as(&pod, &V6_ON).unwrap());

    inpod_rules::remove(&pod).unwrap();
    assert!(istio_v6(&ns).is_empty(), "{:?}", istio_v6(&ns));
    assert!(!v6_rule_present(&ns));
    assert!(v6_table_100(&ns).trim().is_empty(), "{}", v6_table_100(&ns));
    inpod_rules::remove(&pod).unwrap();
}

#[test]
fn ipv6_outbound_is_redirected_to_15001_with_its_original_destination_and_only_when_on() {
    if !namespaces_available("ipv6_outbound_is_redirected_to_15001") {
        return;
    }
    let (pod_ns, world_ns) = pod_and_world();
    let (pod, world) = (open(&pod_ns), open(&world_ns));
    let app = listen(&world, "[fd50::2]:8080");
    let outbound = listen(&pod, "[::]:15001");
    let dst = SocketAddrV6::new(WORLD, 8080, 0, 0);

    // IPv6 off: IPv6 is not touched, the connection goes straight out.
    let off = RuleOptions {
        ipv6: false,
        ..V6_ON
    };
    inpod_rules::apply(&pod, &off).unwrap();
    assert!(istio_v6(&pod_ns).is_empty());
    let _direct = pod.run(|| connect6(dst, None)).unwrap().unwrap();
    assert!(accept_one(&app).is_some(), "without IPv6 rules: direct");
    assert!(nothing_pending(&outbound));

    inpod_rules::apply(&pod, &V6_ON).unwrap();
    let _captured = pod.run(|| connect6(dst, None)).unwrap().unwrap();
    let (redirected, _) = accept_one(&outbound).expect("unmarked IPv6 TCP lands on 15001");
    let original: SocketAddrV6 = socket::getsockopt(&redirected, sockopt::Ip6tOriginalDst)
        .map(|a| SocketAddrV6::from(SockaddrIn6::from(a)))
        .expect("IP6T_SO_ORIGINAL_DST");
    assert_eq!(original, dst);
    assert!(nothing_pending(&app), "the app saw a captured connection");

    // The tunnel's own (marked) sockets pass.
    let _marked = pod.run(|| connect6(dst, Some(0x539))).unwrap().unwrap();
    assert!(accept_one(&app).is_some(), "marked IPv6 TCP goes out");
    assert!(nothing_pending(&outbound));
    inpod_rules::remove(&pod).unwrap();
}

#[test]
fn ipv6_host_probe_snat_rewrites_node_local_connections_to_enrolled_pods() {
    if !namespaces_available("ipv6_host_probe_snat_rewrites_node_local_connections") {
        return;
    }
    // "node" fd50::2 ⇄ "pod" fd50::1; the pod routes everything back via the node.
    let (pod_ns, node_ns) = pod_and_world();
    pod_ns
        .ip(&["-6", "route", "add", "default", "via", &WORLD.to_string()])
        .unwrap();
    let (pod, node) = (open(&pod_ns), open(&node_ns));
    let server = listen(&pod, "[fd50::1]:8080");
    let dst = SocketAddrV6::new(POD, 8080, 0, 0);
    let uid = "11111111-2222-3333-4444-555555555555";

    let snat = node.run(HostProbeSnat::ensure_dual_stack).unwrap().unwrap();
    assert!(node_ns
        .exec("ipset", &["list", "-n"])
        .unwrap()
        .contains(PROBE_IPSET_V6));
    let _c1 = node.run(|| connect6(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&server).expect("connection before enrollment");
    assert_eq!(peer.ip(), IpAddr::V6(WORLD), "not enrolled: no SNAT");

    node.run(|| snat.add_pod(IpAddr::V6(POD), uid))
        .unwrap()
        .unwrap();
    assert_eq!(
        node.run(|| snat.entries()).unwrap().unwrap(),
        vec![(IpAddr::V6(POD), uid.to_string())]
    );
    let _c2 = node.run(|| connect6(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&server).expect("connection after enrollment");
    assert_eq!(
        peer.ip(),
        IpAddr::V6(PROBE_SNAT_V6),
        "enrolled: node-local IPv6 connections come from the IPv6 probe address"
    );

    node.run(|| snat.remove_pod(IpAddr::V6(POD)))
        .unwrap()
        .unwrap();
    node.run(|| snat.uninstall()).unwrap().unwrap();
    let nat6 = node_ns.exec("ip6tables-save", &["-t", "nat"]).unwrap();
    assert!(!nat6.contains("ISTIO_POSTRT"), "{nat6}");
    assert!(!node_ns
        .exec("ipset", &["list", "-n"])
        .unwrap()
        .contains(PROBE_IPSET_V6));
}

#[test]
fn ipv6_kubelet_probes_reach_an_enrolled_pods_app_from_the_probe_source_uncaptured() {
    if !namespaces_available("ipv6_kubelet_probes_reach_an_enrolled_pods_app") {
        return;
    }
    // "node" fd50::2 ⇄ "pod" fd50::1, the pod enrolled as the agent does it: in-pod rules for
    // both families, the node's probe SNAT with the pod's IPv6 address in the `-v6` set.
    let (pod_ns, node_ns) = pod_and_world();
    pod_ns
        .ip(&["-6", "route", "add", "default", "via", &WORLD.to_string()])
        .unwrap();
    let (pod, node) = (open(&pod_ns), open(&node_ns));
    let app = listen(&pod, "[fd50::1]:8080");
    let inbound = listen(&pod, "[::]:15006");
    let dst = SocketAddrV6::new(POD, 8080, 0, 0);
    inpod_rules::apply(&pod, &V6_ON).unwrap();
    let snat = node.run(HostProbeSnat::ensure_dual_stack).unwrap().unwrap();

    // Not in the probe set yet: the node's connection is an ordinary inbound one, captured.
    let _c1 = node.run(|| connect6(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&inbound).expect("inbound IPv6 TCP lands on 15006");
    assert_eq!(peer.ip(), IpAddr::V6(WORLD));
    assert!(nothing_pending(&app), "the app saw a captured connection");

    // In the set (what the agent adds on enrollment): the kubelet's probe arrives from the
    // IPv6 probe source and goes to the app, not to the tunnel.
    node.run(|| snat.add_pod(IpAddr::V6(POD), "11111111-2222-3333-4444-555555555555"))
        .unwrap()
        .unwrap();
    let _probe = node.run(|| connect6(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&app).expect("the probe reaches the app");
    assert_eq!(peer.ip(), IpAddr::V6(PROBE_SNAT_V6));
    assert_eq!(
        peer.ip().to_string(),
        "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
    );
    assert!(
        nothing_pending(&inbound),
        "the probe was redirected to 15006"
    );

    node.run(|| snat.uninstall()).unwrap().unwrap();
    inpod_rules::remove(&pod).unwrap();
}
