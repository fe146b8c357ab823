//! The node agent's node programming against the real thing: network namespaces, iptables,
//! ipset, rtnetlink, cgroups and `/proc`. Needs root; with `CI=true` a machine that cannot run
//! these fails them instead of skipping.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::TimeVal;
use nodetunnel_base::netns::{NetnsError, NetnsHandle, NetnsId};
use nodetunnel_cni::node::host_rules::{HostProbeSnat, HostRulesError, PROBE_IPSET};
use nodetunnel_cni::node::inpod_rules::{self, RuleOptions};
use nodetunnel_cni::node::procscan::{ProcIndex, ScanError};
use nodetunnel_cni::node::tools::Tools;
use nodetunnel_testbed::eventually::wait_until;
use nodetunnel_testbed::netns::unique_prefix;
use nodetunnel_testbed::{namespaces_available, Netns};

const DEADLINE: Duration = Duration::from_secs(10);

/// The contract's rules (docs/contracts.md, "In-pod redirection rules") as written there, not
/// as nodetunnel renders them; the DNS-capture-only lines are marked `dns`.
const CONTRACT_RULES: &[(&str, &str, bool)] = &[
    ("mangle", "-A PREROUTING -j ISTIO_PRERT", false),
    ("mangle", "-A OUTPUT -j ISTIO_OUTPUT", false),
    ("mangle", "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff", false),
    ("mangle", "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff", false),
    ("nat", "-A OUTPUT -j ISTIO_OUTPUT", false),
    ("nat", "-A PREROUTING -j ISTIO_PRERT", false),
    ("nat", "-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT", false),
    ("nat", "-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT", false),
    ("nat", "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006", false),
    ("nat", "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-port 15053", true),
    ("nat", "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053", true),
    ("nat", "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT", false),
    ("nat", "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT", false),
    ("nat", "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001", false),
    ("raw", "-A PREROUTING -j ISTIO_PRERT", true),
    ("raw", "-A OUTPUT -j ISTIO_OUTPUT", true),
    ("raw", "-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1", true),
    ("raw", "-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1", true),
];

/// The contract's host rule (docs/contracts.md, "Host side").
const CONTRACT_HOST_RULE: &str = "-A ISTIO_POSTRT -m owner --socket-exists -p tcp -m set \
     --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127";

fn netns(suffix: &str) -> Netns {
    Netns::create(&format!("{}-{suffix}", unique_prefix())).expect("creating a netns")
}

fn open(ns: &Netns) -> NetnsHandle {
    NetnsHandle::open(&ns.path()).expect("opening the netns")
}

/// `iptables-save` without comments and counters, so two saves of one state compare equal.
fn save(ns: &Netns) -> String {
    let text = ns.exec("iptables-save", &[]).expect("iptables-save");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every line of a save that is about a chain whose name starts with `prefix`, prefixed with
/// its table: the declarations, the rules in it, and the jumps to it.
fn chains_named(save: &str, prefix: &str) -> Vec<String> {
    let mut table = "";
    let mut lines = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
        } else if line.starts_with(&format!(":{prefix}"))
            || (line.starts_with("-A ") && line.contains(prefix))
        {
            lines.push(format!("{table} {line}"));
        }
    }
    lines
}

/// What the contract's rules look like once iptables has them: restored, as the contract
/// writes them, into a scratch namespace and saved back.
fn contract_state(dns: bool) -> Vec<String> {
    let scratch = netns("ref");
    let mut input = String::new();
    for table in ["mangle", "nat", "raw"] {
        let rules: Vec<&str> = CONTRACT_RULES
            .iter()
            .filter(|(t, _, only_dns)| *t == table && (dns || !only_dns))
            .map(|(_, r, _)| *r)
            .collect();
        if rules.is_empty() {
            continue;
        }
        input.push_str(&format!(
            "*{table}\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n"
        ));
        for rule in rules {
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
            "iptables-restore",
            "--noflush",
        ],
        &input,
    )
    .expect("restoring the contract's rules");
    chains_named(&save(&scratch), "ISTIO_")
}

/// One scan of `proc_root`, then the lookup of `uid`, as the agent does per retry round.
fn find_pod_netns(
    proc_root: &Path,
    uid: &str,
    pod_ips: &[IpAddr],
) -> Result<Option<NetnsHandle>, ScanError> {
    Ok(ProcIndex::scan(proc_root)?.find(uid, pod_ips))
}

fn ip_rule_present(ns: &Netns) -> bool {
    ns.ip(&["rule", "show"])
        .unwrap()
        .lines()
        // `ip rule` prints a rule without the lookup action as `lookup 100 none`; such a
        // rule routes nothing, so only the exact line counts.
        .any(|l| l.starts_with("32764:") && l.trim_end().ends_with("fwmark 0x111/0xfff lookup 100"))
}

fn table_100(ns: &Netns) -> String {
    ns.ip(&["route", "show", "table", "100"])
        .unwrap_or_default()
}

#[test]
fn inpod_rules_are_the_contract_idempotent_and_removable() {
    if !namespaces_available("inpod_rules_are_the_contract_idempotent_and_removable") {
        return;
    }
    for dns_capture in [false, true] {
        let opts = RuleOptions {
            dns_capture,
            bypass_inbound: false,
            ipv6: false,
        };
        let ns = netns(if dns_capture { "dns" } else { "nodns" });
        let pod = open(&ns);
        assert!(!inpod_rules::is_applied(&pod).unwrap());

        inpod_rules::apply(&pod, &opts).unwrap();
        let first = save(&ns);
        assert_eq!(
            chains_named(&first, "ISTIO_"),
            contract_state(dns_capture),
            "dns={dns_capture}"
        );
        assert_eq!(first.contains("*raw"), dns_capture, "{first}");
        assert!(ip_rule_present(&ns));
        assert!(
            table_100(&ns).contains("local default dev lo scope host"),
            "{}",
            table_100(&ns)
        );
        assert!(inpod_rules::is_applied(&pod).unwrap());
        assert!(inpod_rules::is_applied_as(&pod, &opts).unwrap());
        let other = RuleOptions {
            dns_capture: !dns_capture,
            ..opts
        };
        assert!(!inpod_rules::is_applied_as(&pod, &other).unwrap());

        inpod_rules::apply(&pod, &opts).unwrap();
        assert_eq!(save(&ns), first, "a second apply changed the rules");
        let rules = ns.ip(&["rule", "show"]).unwrap();
        assert_eq!(rules.matches("fwmark 0x111/0xfff").count(), 1, "{rules}");
        assert_eq!(table_100(&ns).lines().count(), 1, "{}", table_100(&ns));

        // Switching options converges to the other set (raw appears or disappears).
        inpod_rules::apply(&pod, &other).unwrap();
        assert_eq!(
            chains_named(&save(&ns), "ISTIO_"),
            contract_state(!dns_capture)
        );
        inpod_rules::apply(&pod, &opts).unwrap();
        assert_eq!(
            chains_named(&save(&ns), "ISTIO_"),
            contract_state(dns_capture)
        );

        inpod_rules::remove(&pod).unwrap();
        let after = save(&ns);
        assert!(chains_named(&after, "ISTIO").is_empty(), "{after}");
        assert!(!ip_rule_present(&ns));
        assert_eq!(table_100(&ns).trim(), "");
        assert!(!inpod_rules::is_applied(&pod).unwrap());
        inpod_rules::remove(&pod).unwrap();
    }
}

#[test]
fn inpod_rules_leave_foreign_rules_and_drop_duplicate_jumps() {
    if !namespaces_available("inpod_rules_leave_foreign_rules_and_drop_duplicate_jumps") {
        return;
    }
    let ns = netns("foreign");
    let pod = open(&ns);
    let opts = RuleOptions::default();
    inpod_rules::apply(&pod, &opts).unwrap();
    let clean = save(&ns);
    // Someone else's rule, and a second copy of one of our jumps (e.g. an older agent's
    // plain `--noflush` re-apply).
    ns.exec(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    )
    .unwrap();
    ns.exec(
        "iptables",
        &["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"],
    )
    .unwrap();
    assert!(!inpod_rules::is_applied(&pod).unwrap());
    inpod_rules::apply(&pod, &opts).unwrap();
    let fixed = save(&ns);
    assert_eq!(
        chains_named(&fixed, "ISTIO_"),
        chains_named(&clean, "ISTIO_")
    );
    assert!(fixed.contains("-A POSTROUTING -j MASQUERADE"), "{fixed}");
    inpod_rules::remove(&pod).unwrap();
    let removed = save(&ns);
    assert!(chains_named(&removed, "ISTIO").is_empty(), "{removed}");
    assert!(
        removed.contains("-A POSTROUTING -j MASQUERADE"),
        "{removed}"
    );
}

#[test]
fn bypass_inbound_keeps_outbound_capture_only() {
    if !namespaces_available("bypass_inbound_keeps_outbound_capture_only") {
        return;
    }
    let ns = netns("bypass");
    let pod = open(&ns);
    let opts = RuleOptions {
        dns_capture: false,
        bypass_inbound: true,
        ipv6: false,
    };
    inpod_rules::apply(&pod, &opts).unwrap();
    let state = chains_named(&save(&ns), "ISTIO_");
    assert!(
        !state.iter().any(|l| l.contains("-A ISTIO_PRERT ")),
        "{state:#?}"
    );
    assert!(
        state.iter().any(|l| l.contains("--to-ports 15001")),
        "{state:#?}"
    );
    assert!(inpod_rules::is_applied_as(&pod, &opts).unwrap());
    inpod_rules::remove(&pod).unwrap();
}

/// A pod namespace wired to a "world" namespace over a veth: pod 10.250.0.1, world 10.250.0.2.
fn pod_and_world() -> (Netns, Netns) {
    let pod = netns("pod");
    let world = netns("world");
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
    pod.ip(&["addr", "add", "10.250.0.1/24", "dev", "veth0"])
        .unwrap();
    pod.ip(&["link", "set", "veth0", "up"]).unwrap();
    world
        .ip(&["addr", "add", "10.250.0.2/24", "dev", "veth1"])
        .unwrap();
    world.ip(&["link", "set", "veth1", "up"]).unwrap();
    (pod, world)
}

/// Waits for one connection on a non-blocking listener.
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

/// A TCP connection from the calling thread's netns, its socket marked with `mark` when given.
fn connect(dst: SocketAddrV4, mark: Option<u32>) -> io::Result<TcpStream> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(mark) = mark {
        socket::setsockopt(&fd, sockopt::Mark, &mark)?;
    }
    // A bound on connect, so a misrouted SYN fails the test instead of hanging it.
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(10, 0))?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

#[test]
fn redirection_sends_unmarked_outbound_to_15001() {
    if !namespaces_available("redirection_sends_unmarked_outbound_to_15001") {
        return;
    }
    let (pod_ns, world_ns) = pod_and_world();
    let pod = open(&pod_ns);
    let world = open(&world_ns);
    let app = world
        .run(|| TcpListener::bind("10.250.0.2:8080"))
        .unwrap()
        .unwrap();
    let outbound = pod
        .run(|| TcpListener::bind("0.0.0.0:15001"))
        .unwrap()
        .unwrap();
    app.set_nonblocking(true).unwrap();
    outbound.set_nonblocking(true).unwrap();
    inpod_rules::apply(&pod, &RuleOptions::default()).unwrap();

    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 2), 8080);
    let mut plain = pod
        .run(|| connect(dst, None))
        .unwrap()
        .expect("unmarked connect");
    let (mut captured, _) = accept_one(&outbound).expect("the unmarked connection reached :15001");
    assert!(
        nothing_pending(&app),
        "the unmarked connection also reached the app"
    );
    plain.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    captured.set_nonblocking(false).unwrap();
    captured.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");

    let _marked = pod
        .run(|| connect(dst, Some(0x539)))
        .unwrap()
        .expect("marked connect");
    let (_, peer) = accept_one(&app).expect("the tunnel-marked connection reached the app");
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1)));
    assert!(
        nothing_pending(&outbound),
        "the marked connection was redirected"
    );

    inpod_rules::remove(&pod).unwrap();
    let _direct = pod
        .run(|| connect(dst, None))
        .unwrap()
        .expect("connect after removal");
    assert!(
        accept_one(&app).is_some(),
        "without rules the app is reached directly"
    );
    assert!(nothing_pending(&outbound));
}

#[test]
fn host_probe_snat_ensure_entries_uninstall() {
    if !namespaces_available("host_probe_snat_ensure_entries_uninstall") {
        return;
    }
    let node_ns = netns("node");
    let node = open(&node_ns);
    let uid1 = "11111111-2222-3333-4444-555555555555";
    let uid2 = "66666666-7777-8888-9999-000000000000";
    let uid3 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };

    let snat = node
        .run(|| {
            HostProbeSnat::ensure()?;
            HostProbeSnat::ensure()
        })
        .unwrap()
        .unwrap();
    let nat = node_ns.exec("iptables-save", &["-t", "nat"]).unwrap();
    assert_eq!(
        nat.matches("-A POSTROUTING -j ISTIO_POSTRT").count(),
        1,
        "{nat}"
    );
    assert_eq!(nat.matches("-A ISTIO_POSTRT ").count(), 1, "{nat}");
    // The same rule as the contract's, once iptables has both.
    let reference = netns("noderef");
    reference
        .exec("ipset", &["create", PROBE_IPSET, "hash:ip", "comment"])
        .unwrap();
    nodetunnel_testbed::cmd::run_with_stdin(
        "ip",
        &["netns", "exec", reference.name(), "iptables-restore", "--noflush"],
        &format!("*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n{CONTRACT_HOST_RULE}\nCOMMIT\n"),
    )
    .unwrap();
    assert_eq!(
        chains_named(&save(&node_ns), "ISTIO_"),
        chains_named(&save(&reference), "ISTIO_")
    );

    let entries = node
        .run(|| -> Result<_, HostRulesError> {
            snat.add_pod(ip("10.0.0.1"), uid1)?;
            snat.add_pod(ip("10.0.0.2"), uid2)?;
            snat.add_pod(ip("10.0.0.2"), uid2)?;
            // The IP of pod 1 is reused by pod 3.
            snat.add_pod(ip("10.0.0.1"), uid3)?;
            let mut entries = snat.entries()?;
            entries.sort();
            Ok(entries)
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        entries,
        vec![
            (ip("10.0.0.1"), uid3.to_string()),
            (ip("10.0.0.2"), uid2.to_string())
        ]
    );
    let listed = node_ns.exec("ipset", &["save", PROBE_IPSET]).unwrap();
    assert!(
        listed.contains(&format!("add {PROBE_IPSET} 10.0.0.1 comment \"{uid3}\"")),
        "{listed}"
    );

    node.run(|| -> Result<(), HostRulesError> {
        // Pod 1's late removal must not take pod 3's entry.
        assert!(!snat.remove_pod_if_owned(ip("10.0.0.1"), uid1)?);
        assert!(snat.remove_pod_if_owned(ip("10.0.0.1"), uid3)?);
        snat.remove_pod(ip("10.0.0.2"))?;
        snat.remove_pod(ip("10.0.0.2"))?;
        assert!(snat.entries()?.is_empty());
        assert!(matches!(
            snat.add_pod(ip("fd00::1"), uid1),
            Err(HostRulesError::Ipv6Off { .. })
        ));
        snat.uninstall()?;
        snat.uninstall()
    })
    .unwrap()
    .unwrap();
    let nat = node_ns.exec("iptables-save", &["-t", "nat"]).unwrap();
    assert!(!nat.contains("ISTIO_POSTRT"), "{nat}");
    let sets = node_ns.exec("ipset", &["list", "-n"]).unwrap();
    assert!(!sets.contains(PROBE_IPSET), "{sets}");
}

#[test]
fn host_probe_snat_rewrites_node_local_connections_to_enrolled_pods() {
    if !namespaces_available("host_probe_snat_rewrites_node_local_connections_to_enrolled_pods") {
        return;
    }
    // "node" 10.250.0.2 ⇄ "pod" 10.250.0.1, pod routes everything back via the node.
    let (pod_ns, node_ns) = pod_and_world();
    pod_ns
        .ip(&["route", "add", "default", "via", "10.250.0.2"])
        .unwrap();
    let pod = open(&pod_ns);
    let node = open(&node_ns);
    let server = pod
        .run(|| TcpListener::bind("10.250.0.1:8080"))
        .unwrap()
        .unwrap();
    server.set_nonblocking(true).unwrap();
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 1), 8080);
    let probe_source = IpAddr::V4(Ipv4Addr::new(169, 254, 7, 127));

    let snat = node.run(HostProbeSnat::ensure).unwrap().unwrap();
    let _c1 = node.run(|| connect(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&server).expect("connection before enrollment");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2)),
        "not enrolled: no SNAT"
    );

    node.run(|| {
        snat.add_pod(
            IpAddr::V4(*dst.ip()),
            "11111111-2222-3333-4444-555555555555",
        )
    })
    .unwrap()
    .unwrap();
    let _c2 = node.run(|| connect(dst, None)).unwrap().unwrap();
    let (_, peer) = accept_one(&server).expect("connection after enrollment");
    assert_eq!(
        peer.ip(),
        probe_source,
        "enrolled: node-local connections come from the probe address"
    );
    node.run(|| snat.uninstall()).unwrap().unwrap();
}

#[test]
fn pod_netns_run_enters_and_reports_panics() {
    if !namespaces_available("pod_netns_run_enters_and_reports_panics") {
        return;
    }
    let ns = netns("run");
    ns.ip(&["addr", "add", "10.252.0.9/32", "dev", "lo"])
        .unwrap();
    let pod = open(&ns);
    assert_ne!(pod.id(), NetnsId::of_process().unwrap());
    let inside = pod
        .run(|| NetnsHandle::open(Path::new("/proc/thread-self/ns/net")).map(|n| n.id()))
        .unwrap()
        .unwrap();
    assert_eq!(inside, pod.id());
    let addrs = pod.addresses().unwrap();
    assert!(addrs.contains(&"10.252.0.9".parse().unwrap()), "{addrs:?}");
    assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    // The handle outlives the name.
    let path = ns.path();
    drop(ns);
    assert!(!path.exists());
    assert!(pod
        .addresses()
        .unwrap()
        .contains(&"10.252.0.9".parse().unwrap()));

    let err = pod.run(|| -> () { panic!("boom") }).unwrap_err();
    assert!(
        matches!(&err, NetnsError::Panicked { message, .. } if message == "boom"),
        "{err:?}"
    );
}

/// A process (`sleep`) in a cgroup whose path holds `pod<uid>`; killed and its cgroups removed
/// on drop.
struct PodProcess {
    child: Child,
    dirs: Vec<PathBuf>,
}

impl PodProcess {
    /// Starts `sleep` in the calling thread's netns and moves it into `ntt<pid>-…-kubepods/pod<uid>`
    /// under the first writable cgroup hierarchy.
    fn start(uid: &str) -> PodProcess {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawning sleep");
        let mut process = PodProcess {
            child,
            dirs: Vec::new(),
        };
        let parent_name = format!("{}-kubepods", unique_prefix());
        let mut last_err = None;
        for root in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/systemd",
        ] {
            let root = Path::new(root);
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let parent = root.join(&parent_name);
            let pod_dir = parent.join(format!("pod{uid}"));
            match fs::create_dir_all(&pod_dir) {
                Ok(()) => process.dirs = vec![pod_dir.clone(), parent],
                Err(e) => {
                    last_err = Some(format!("{}: {e}", pod_dir.display()));
                    continue;
                }
            }
            match fs::write(pod_dir.join("cgroup.procs"), process.child.id().to_string()) {
                Ok(()) => return process,
                Err(e) => last_err = Some(format!("{}: {e}", pod_dir.display())),
            }
            process.remove_dirs();
        }
        panic!("no cgroup hierarchy took the test process: {last_err:?}");
    }

    fn remove_dirs(&mut self) {
        for dir in self.dirs.drain(..) {
            let _ = fs::remove_dir(dir);
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait(); // reaped, so the cgroup is empty and removable
        self.remove_dirs();
    }
}

#[test]
fn procscan_finds_running_pod_netns_by_cgroup_uid_and_ip() {
    if !namespaces_available("procscan_finds_running_pod_netns_by_cgroup_uid_and_ip") {
        return;
    }
    let uid = "3f6c2a1e-9b7d-4e25-8a10-0c1d2e3f4a5b";
    let host_uid = "7e8d9c0b-1a2b-4c3d-9e8f-7a6b5c4d3e2f";
    let proc_root = Path::new("/proc");
    let pod_ip: IpAddr = "10.251.0.5".parse().unwrap();

    let ns = netns("scan");
    ns.ip(&["addr", "add", "10.251.0.5/32", "dev", "lo"])
        .unwrap();
    let pod = open(&ns);
    let _in_pod = pod.run(|| PodProcess::start(uid)).unwrap();
    // A process of another "pod" that sits in the agent's own (host) netns.
    let _in_host = PodProcess::start(host_uid);

    let found = find_pod_netns(proc_root, uid, &[pod_ip])
        .unwrap()
        .expect("pod netns found");
    assert_eq!(found.id(), pod.id());
    // Uppercase or v4-mapped input still matches.
    let mapped: IpAddr = "::ffff:10.251.0.5".parse().unwrap();
    let found = find_pod_netns(proc_root, &uid.to_uppercase(), &[mapped]).unwrap();
    assert_eq!(found.map(|n| n.id()), Some(pod.id()));

    let other_uid = "00000000-0000-4000-8000-000000000000";
    assert!(find_pod_netns(proc_root, other_uid, &[pod_ip])
        .unwrap()
        .is_none());
    let wrong_ip: IpAddr = "10.251.0.6".parse().unwrap();
    assert!(find_pod_netns(proc_root, uid, &[wrong_ip])
        .unwrap()
        .is_none());
    assert!(find_pod_netns(proc_root, uid, &[]).unwrap().is_none());

    // 127.0.0.1 is in every netns: the pod's is found by it, the host's never is.
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(find_pod_netns(proc_root, uid, &[loopback])
        .unwrap()
        .is_some());
    assert!(find_pod_netns(proc_root, host_uid, &[loopback])
        .unwrap()
        .is_none());
}

#[test]
fn procscan_with_an_unreadable_proc_root_is_an_error() {
    let err = find_pod_netns(
        Path::new("/nonexistent/ntt-proc"),
        "x",
        &["10.0.0.1".parse().unwrap()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ntt-proc"), "{err}");
}

#[test]
fn inpod_rules_on_the_legacy_backend_via_explicit_tools() {
    if !namespaces_available("inpod_rules_on_the_legacy_backend_via_explicit_tools") {
        return;
    }
    if Command::new("iptables-legacy-save")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: iptables-legacy is not installed (an optional backend)");
        return;
    }
    let tools = Tools {
        iptables_restore: "iptables-legacy-restore".into(),
        iptables_save: "iptables-legacy-save".into(),
        ..Tools::default()
    };
    let ns = netns("legacy");
    let pod = open(&ns);
    let opts = RuleOptions {
        dns_capture: true,
        bypass_inbound: false,
        ipv6: false,
    };
    inpod_rules::apply_with(&tools, &pod, &opts).unwrap();
    let legacy_save = || {
        let text = ns.exec("iptables-legacy-save", &[]).unwrap();
        chains_named(&text, "ISTIO_")
            .into_iter()
            .map(|l| l.split(" [").next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let first = legacy_save();
    assert_eq!(
        first.iter().filter(|l| l.contains("-A ")).count(),
        18,
        "{first:#?}"
    );
    // The legacy backend prints the rules as nodetunnel spells them: the state reads as exact.
    assert!(inpod_rules::is_applied_with(&tools, &pod, Some(&opts)).unwrap());
    inpod_rules::apply_with(&tools, &pod, &opts).unwrap();
    assert_eq!(legacy_save(), first);
    inpod_rules::remove_with(&tools, &pod).unwrap();
    assert!(legacy_save().is_empty());
}

/// `tcp_migrate_req` as a thread inside `ns` reads it.
fn migrate_req(ns: &Netns) -> String {
    ns.run(|| fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").expect("reading it"))
        .trim()
        .to_owned()
}

/// The agent turns listener migration on inside the pod (so a tunnel upgrade resets no queued
/// connection), idempotently, and nowhere else.
#[test]
fn listener_handover_is_enabled_in_the_pod_netns_only() {
    if !namespaces_available("node_listener_handover") {
        return;
    }
    let (pod, other) = (netns("handover-pod"), netns("handover-other"));
    assert_eq!(
        migrate_req(&pod),
        "0",
        "a fresh namespace starts without it"
    );
    let handle = open(&pod);
    nodetunnel_cni::node::listener_handover::enable(&handle).expect("enabling it");
    nodetunnel_cni::node::listener_handover::enable(&handle).expect("enabling it again");
    assert_eq!(migrate_req(&pod), "1");
    assert_eq!(migrate_req(&other), "0", "another namespace is untouched");
}
