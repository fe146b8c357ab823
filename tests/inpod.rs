//! End-to-end tests of shared (in-pod) mode: every pod its own network namespace carrying the
//! in-pod rules (docs/contracts.md, "In-pod redirection rules"; installed by the CNI agent's own
//! code), one real `nodetunnel` process per node namespace, and a ZDS
//! agent (the library's agent side, in this test process) handing the tunnel pod namespaces
//! over a real SOCK_SEQPACKET socket.
//!
//! Standard topology (`PodTopology::two_node`): n1 — pods client 10.77.1.10, client2
//! 10.77.1.11 | n2 — pod server 10.77.2.10, non-mesh pod plain 10.77.2.20.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodetunnel_proto::istio::zds::{self as pb, workload_request::Payload};
use nodetunnel_testbed::inpod::{InpodRules, PodNs, PodTopology};
use nodetunnel_testbed::procstat;
use nodetunnel_testbed::traffic::{bulk_exchange, bulk_handler, echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, env_refs, generate_ca, namespaces_available,
    shared_tunnel_env, Ca, ControlPlane, Mesh as MeshSource, MeshConfig, Server, Tunnel,
};
use nodetunnel_zds::server::{Ack, ZdsPeer, ZdsServer};
use nodetunnel_zds::WorkloadInfo;
use prost::Message;

const MIB: u64 = 1 << 20;
const SERVER_PORT: u16 = 8080;
/// DRAIN_TIMEOUT of the tunnels: how long a removed pod's live connections may continue.
const DRAIN: Duration = Duration::from_secs(3);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

/// Another package's binary: `cargo test --workspace` (or `cargo build --workspace`) puts it
/// beside this test's.
fn control_bin() -> PathBuf {
    nodetunnel_testbed::sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

fn server_addr() -> SocketAddr {
    (addr::SERVER, SERVER_PORT).into()
}

/// The agent side of ZDS for one node, driven synchronously from the test.
struct Agent {
    rt: tokio::runtime::Runtime,
    server: ZdsServer,
    peer: Option<ZdsPeer>,
}

impl Agent {
    fn bind(path: &Path) -> Agent {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = rt
            .block_on(async { ZdsServer::bind(path) })
            .expect("binding the ZDS socket");
        Agent {
            rt,
            server,
            peer: None,
        }
    }

    /// Waits for the tunnel to connect (and say hello).
    fn accept(&mut self) {
        let peer = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), self.server.accept()).await
            })
            .expect("the tunnel did not connect to the agent within 20s")
            .expect("accepting the tunnel");
        self.peer = Some(peer);
    }

    /// Drops the connection, as an agent restart would.
    fn disconnect(&mut self) {
        self.peer = None;
    }

    /// Runs one exchange with the connected tunnel.
    fn call<T>(&mut self, f: impl AsyncFnOnce(&mut ZdsPeer) -> T) -> T {
        let peer = self.peer.as_mut().expect("no tunnel connected");
        self.rt.block_on(f(peer))
    }

    /// Enrols the pod whose namespace is at `netns` as `info`.
    fn add_as(&mut self, uid: &str, netns: &Path, info: &WorkloadInfo) -> Ack {
        let netns = std::fs::File::open(netns).expect("opening the pod netns");
        self.call(async |peer| peer.add(uid, Some(info), netns.as_fd()).await)
            .expect("add")
    }

    fn add(&mut self, uid: &str, pod: &PodNs) -> Ack {
        self.add_as(uid, &pod.ns().path(), &info_of(pod))
    }

    fn del(&mut self, uid: &str) -> Ack {
        self.call(async |peer| peer.del(uid).await).expect("del")
    }

    fn snapshot_sent(&mut self) -> Ack {
        self.call(async |peer| peer.snapshot_sent().await)
            .expect("snapshot sent")
    }

    /// Sends one raw datagram with `fds` and returns the tunnel's ack.
    fn raw(&mut self, what: &str, bytes: &[u8], fds: &[&std::fs::File]) -> Ack {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        self.call(async |peer| {
            peer.send_raw(bytes, &borrowed).await?;
            peer.recv_ack().await
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// The pod as the agent describes it: name, namespace `default`, service account = name
/// (the testbed's `Workload::new` defaults).
fn info_of(pod: &PodNs) -> WorkloadInfo {
    WorkloadInfo {
        name: pod.name().into(),
        namespace: "default".into(),
        service_account: pod.name().into(),
    }
}

fn uid_of(pod: &PodNs) -> String {
    format!("uid-{}", pod.name())
}

fn assert_ok(ack: &Ack, what: &str) {
    assert!(ack.is_ok(), "{what}: the tunnel answered {:?}", ack.error);
}

/// A two-node in-pod mesh: both tunnels running, both agents connected, every mesh pod
/// enrolled, snapshots sent, both tunnels ready.
struct Mesh {
    // Drop order matters: tunnels (printing their log tails on panic) before the topology
    // removes the directory holding those logs.
    tunnels: Vec<(String, Tunnel)>,
    agents: Vec<(String, Agent)>,
    /// `nodetunnel-control` on n1: xDS and certificates for both tunnels.
    control: ControlPlane,
    topo: PodTopology,
}

impl Mesh {
    fn start(test: &str) -> Option<Mesh> {
        Mesh::start_with(test, &[])
    }

    fn start_with(test: &str, extra_env: &[(&str, &str)]) -> Option<Mesh> {
        if !namespaces_available(test) {
            return None;
        }
        let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
        let config = topo.path("mesh.yaml");
        MeshConfig::standard(SERVER_PORT)
            .write(&config)
            .expect("writing the mesh config");
        let ca = topo.path("ca");
        std::fs::create_dir_all(&ca).expect("creating the CA dir");
        generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
        let control = topo
            .start_control_plane("n1", &control_bin(), &config, &ca, &[])
            .expect("starting the control plane");
        let mut mesh = Mesh {
            agents: Vec::new(),
            tunnels: Vec::new(),
            control,
            topo,
        };
        for node in ["n1", "n2"] {
            let uds = mesh.topo.path(&format!("{node}-zds.sock"));
            let mut agent = Agent::bind(&uds);
            let mut env = shared_tunnel_env(
                node,
                MeshSource::Control(&mesh.control),
                Ca::Control(&mesh.control),
                &uds,
            );
            env.push(("DRAIN_TIMEOUT".into(), format!("{}s", DRAIN.as_secs())));
            for (k, v) in extra_env {
                env.push((k.to_string(), v.to_string()));
            }
            let mut tunnel = mesh
                .topo
                .spawn_tunnel(node, bin(), &env_refs(&env))
                .expect("starting the tunnel");
            agent.accept();
            assert!(!tunnel.is_ready(), "ready before any snapshot");
            let pods: Vec<(String, &PodNs)> = mesh
                .topo
                .pods_on(node)
                .filter(|p| p.mesh())
                .map(|p| (uid_of(p), p))
                .collect();
            for (uid, pod) in pods {
                assert_ok(&agent.add(&uid, pod), &format!("add {uid}"));
            }
            assert_ok(&agent.snapshot_sent(), "snapshot sent");
            tunnel
                .wait_ready(Duration::from_secs(10))
                .expect("tunnel ready after the snapshot");
            mesh.agents.push((node.into(), agent));
            mesh.tunnels.push((node.into(), tunnel));
        }
        Some(mesh)
    }

    fn agent(&mut self, node: &str) -> &mut Agent {
        &mut self.agents.iter_mut().find(|(n, _)| n == node).unwrap().1
    }

    fn tunnel(&self, node: &str) -> &Tunnel {
        &self.tunnels.iter().find(|(n, _)| n == node).unwrap().1
    }

    fn tunnel_mut(&mut self, node: &str) -> &mut Tunnel {
        &mut self.tunnels.iter_mut().find(|(n, _)| n == node).unwrap().1
    }

    fn pod(&self, name: &str) -> &PodNs {
        self.topo.pod(name)
    }

    /// Connects from inside pod `from` (bound to its address) to `dst`.
    fn connect(&self, from: &str, dst: SocketAddr) -> io::Result<TcpStream> {
        let pod = self.pod(from);
        let ip = pod.ip();
        pod.ns().run(move || connect_from(ip, dst))
    }

    /// Starts a server inside pod `pod` on `port`.
    fn server(
        &self,
        pod: &str,
        port: u16,
        handler: impl Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        let pod = self.pod(pod);
        Server::start(pod.ns(), (pod.ip(), port).into(), handler).expect("starting the server")
    }

    /// The tunnel's `/config_dump` (admin port, inside the node namespace).
    fn config_dump(&self, node: &str) -> serde_json::Value {
        self.tunnel(node)
            .config_dump()
            .unwrap_or_else(|e| panic!("/config_dump on {node}: {e}"))
    }

    /// Panics unless a new connection from pod `from` to the server is refused (its
    /// listeners are gone while its rules still redirect to :15001).
    fn assert_refused(&self, from: &str, why: &str) {
        let refused = self.connect(from, server_addr());
        assert_eq!(
            refused.as_ref().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionRefused),
            "{why}: {refused:?}"
        );
    }

    /// Established connections on local port `port` inside pod `pod`.
    fn established_on(&self, pod: &str, port: u16) -> usize {
        self.pod(pod)
            .ns()
            .established_on_local_port(port)
            .expect("ss")
    }
}

/// One echo round trip of `data` on a fresh connection from pod `from` to `dst`.
fn echo_once(mesh: &Mesh, from: &str, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
    let mut s = mesh.connect(from, dst)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    echo_roundtrip(&mut s, data)
}

/// The identities of `/config_dump`'s `certificates` (ztunnel's shape: one object per identity).
fn cert_identities(dump: &serde_json::Value) -> Vec<String> {
    dump["certificates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["identity"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The source IPs of the connections `server` accepted, in order.
fn peer_ips(server: &Server) -> Vec<IpAddr> {
    server.peers().iter().map(|p| p.ip()).collect()
}

/// True when the connection is closed by the peer (EOF or reset) within the read timeout.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn pod_to_pod_across_nodes_is_byte_exact_over_hbone_and_the_app_sees_the_client_ip() {
    let Some(mesh) = Mesh::start("inpod_cross_node") else {
        return;
    };
    let server = mesh.server("server", SERVER_PORT, bulk_handler);
    let mut s = mesh
        .connect("client", server_addr())
        .expect("connecting from the client pod");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let report = bulk_exchange(&mut s, 31, 64 * MIB, 64 * MIB).expect("bulk exchange");
    assert!(report.is_exact(), "{report:?}");
    // The tunnel's HBONE connection ends in the server pod's namespace on :15008, and the
    // app's connection comes from the client pod's own address, not the tunnel's.
    assert!(
        mesh.established_on("server", 15008) >= 1,
        "no HBONE into the server pod"
    );
    assert_eq!(
        peer_ips(&server),
        vec![IpAddr::from(addr::CLIENT)],
        "the server app should see the client pod's address"
    );
    drop(s);
    let inbound = mesh.tunnel("n2").wait_access_line(
        &[("direction", "inbound"), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    assert!(
        inbound.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{inbound}"
    );
    let outbound = mesh.tunnel("n1").wait_access_line(
        &[("direction", "outbound"), ("protocol", "HBONE")],
        Duration::from_secs(10),
    );
    assert!(
        outbound.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{outbound}"
    );
}

#[test]
fn pod_to_pod_on_the_same_node_goes_through_the_tunnel() {
    let Some(mesh) = Mesh::start("inpod_same_node") else {
        return;
    };
    let server = mesh.server("client2", SERVER_PORT, echo_handler);
    let dst: SocketAddr = (addr::CLIENT2, SERVER_PORT).into();
    for i in 0..5u8 {
        echo_once(&mesh, "client", dst, &[i; 100_000]).expect("echo client → client2");
    }
    assert_eq!(peer_ips(&server), vec![IpAddr::from(addr::CLIENT); 5]);
    mesh.tunnel("n1").wait_access_line(
        &[
            ("direction", "inbound"),
            ("protocol", "HBONE"),
            (
                "dst.identity",
                "spiffe://cluster.local/ns/default/sa/client2",
            ),
        ],
        Duration::from_secs(10),
    );
}

#[test]
fn a_deleted_pod_drains_its_live_connection_then_refuses_new_ones() {
    let Some(mut mesh) = Mesh::start("inpod_delete") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let mut live = mesh.connect("client", server_addr()).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_roundtrip(&mut live, b"before delete").expect("echo before delete");

    let uid = uid_of(mesh.pod("client"));
    let client_id = "spiffe://cluster.local/ns/default/sa/client";
    let dump = mesh.config_dump("n1");
    let pod = dump["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["uid"] == uid.as_str()))
        .unwrap_or_else(|| panic!("/config_dump lacks the running pod: {dump}"));
    assert_eq!(pod["identity"], client_id, "{dump}");
    assert_eq!(pod["connections"], 1, "{dump}");
    assert!(
        cert_identities(&dump).contains(&client_id.to_string()),
        "{dump}"
    );
    assert_ok(&mesh.agent("n1").del(&uid), "del client");
    let dump = mesh.config_dump("n1");
    let uids: Vec<&str> = dump["pods"]
        .as_array()
        .map(|pods| pods.iter().filter_map(|p| p["uid"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !uids.contains(&uid.as_str()),
        "/config_dump still lists the deleted pod: {dump}"
    );
    // Its identity had no other pod: the certificate is no longer kept (or renewed).
    assert!(
        !cert_identities(&dump).contains(&client_id.to_string()),
        "{dump}"
    );
    // Listeners are gone at once: the in-pod rules still redirect to :15001, where nothing
    // listens any more.
    mesh.assert_refused("client", "new connection from a deleted pod");
    assert_eq!(
        mesh.pod("client")
            .ns()
            .exec("ss", &["-Hltn", "sport = :15008"])
            .unwrap()
            .trim(),
        ""
    );
    // The live connection keeps working while it drains …
    echo_roundtrip(&mut live, b"during drain").expect("echo during the drain");
    // … and is cut once DRAIN_TIMEOUT has passed.
    live.set_read_timeout(Some(DRAIN * 3)).unwrap();
    assert!(
        is_closed(&mut live),
        "connection survived the drain deadline"
    );
    mesh.tunnel("n1").wait_access_line(
        &[
            ("direction", "outbound"),
            ("protocol", "HBONE"),
            ("flag", "drain_cut"),
        ],
        Duration::from_secs(10),
    );
    // Other pods on the node are untouched.
    let _s2 = mesh.server("client2", SERVER_PORT, echo_handler);
    echo_once(
        &mesh,
        "server",
        (addr::CLIENT2, SERVER_PORT).into(),
        b"still here",
    )
    .expect("server → client2 after client was deleted");
}

#[test]
fn agent_reconnect_snapshot_keeps_named_pods_and_drains_the_rest() {
    let Some(mut mesh) = Mesh::start("inpod_snapshot") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let mut kept = mesh
        .connect("client", server_addr())
        .expect("connect client");
    let mut dropped = mesh
        .connect("client2", server_addr())
        .expect("connect client2");
    for s in [&mut kept, &mut dropped] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        echo_roundtrip(s, b"hello").expect("echo");
    }

    // The agent goes away: the tunnel keeps its pods but is not ready.
    mesh.agent("n1").disconnect();
    assert_eventually!(!mesh.tunnel("n1").is_ready(), Duration::from_secs(10));
    // The probe's answer says what it waits for, so an operator need not read the log.
    let (status, body) = mesh.tunnel("n1").readiness_answer().expect("readiness");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "not ready: waiting for the node agent's snapshot\n");
    echo_roundtrip(&mut kept, b"agent gone").expect("echo while the agent is away");
    echo_roundtrip(&mut dropped, b"agent gone").expect("echo while the agent is away");

    // It comes back with a snapshot naming only `client` (same netns: nothing restarts).
    mesh.agent("n1").accept();
    let (uid, path, info) = {
        let pod = mesh.pod("client");
        (uid_of(pod), pod.ns().path(), info_of(pod))
    };
    assert_ok(
        &mesh.agent("n1").add_as(&uid, &path, &info),
        "re-add client",
    );
    assert!(
        !mesh.tunnel("n1").is_ready(),
        "ready before the snapshot ended"
    );
    assert_ok(&mesh.agent("n1").snapshot_sent(), "snapshot sent");
    mesh.tunnel_mut("n1")
        .wait_ready(Duration::from_secs(10))
        .expect("ready after the new snapshot");

    // client's live connection never noticed; client2 (missing) is drained: refused now,
    // its live connection cut after the deadline.
    echo_roundtrip(&mut kept, b"after snapshot").expect("kept pod's live connection");
    echo_once(&mesh, "client", server_addr(), b"new").expect("kept pod, new connection");
    mesh.assert_refused("client2", "pod missing from the snapshot still accepts");
    dropped.set_read_timeout(Some(DRAIN * 3)).unwrap();
    assert!(is_closed(&mut dropped), "drained pod's connection survived");
    echo_roundtrip(&mut kept, b"still").expect("kept pod's live connection after the drain");
}

/// Encodes a ZDS request.
fn request(payload: Payload) -> Vec<u8> {
    pb::WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

#[test]
fn malformed_zds_requests_get_error_acks_and_other_pods_keep_working() {
    let Some(mut mesh) = Mesh::start("inpod_malformed") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let mut live = mesh.connect("client", server_addr()).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_roundtrip(&mut live, b"before").expect("echo");

    let netns = std::fs::File::open(mesh.pod("client2").ns().path()).unwrap();
    let netns2 = std::fs::File::open(mesh.pod("client2").ns().path()).unwrap();
    let add = |uid: &str| {
        request(Payload::Add(pb::AddWorkload {
            uid: uid.into(),
            workload_info: None,
        }))
    };
    let del = request(Payload::Del(pb::DelWorkload {
        uid: "uid-client".into(),
    }));
    let mut cases: Vec<(&str, Vec<u8>, Vec<&std::fs::File>, &str)> = vec![
        (
            "fd on a del",
            del,
            vec![&netns],
            "must not carry file descriptors",
        ),
        (
            "add without fd",
            add("uid-x"),
            vec![],
            "no netns file descriptor",
        ),
        (
            "add with two fds",
            add("uid-y"),
            vec![&netns, &netns2],
            "2 file descriptors",
        ),
        (
            "garbage",
            vec![0xff, 0xff, 0xff, 0x0f, 0x01],
            vec![],
            "malformed",
        ),
        (
            "truncated datagram",
            vec![0x0a; 70 * 1024],
            vec![],
            "larger than",
        ),
        (
            "no payload",
            pb::WorkloadRequest { payload: None }.encode_to_vec(),
            vec![],
            "without payload",
        ),
    ];
    // Well-formed (with workload info), but the fd is a regular file rather than a network
    // namespace: refused when the handle is made, before anything is bound.
    let not_a_netns = std::fs::File::open(mesh.topo.path("mesh.yaml")).unwrap();
    let add_file = request(Payload::Add(pb::AddWorkload {
        uid: "uid-file".into(),
        workload_info: Some(pb::WorkloadInfo {
            name: "file".into(),
            namespace: "default".into(),
            service_account: "file".into(),
            ..Default::default()
        }),
    }));
    cases.push((
        "add with a non-netns fd",
        add_file,
        vec![&not_a_netns],
        "is not a network namespace",
    ));
    let fds_before = procstat::fd_count(mesh.tunnel("n1").pid()).unwrap();
    for (what, bytes, fds, expected) in cases {
        let ack = mesh.agent("n1").raw(what, &bytes, &fds);
        let error = ack
            .error
            .unwrap_or_else(|| panic!("{what}: acked as success"));
        assert!(
            error.contains(expected),
            "{what}: error {error:?} lacks {expected:?}"
        );
    }
    // Nothing crashed, nothing leaked (every rejected fd was closed), and the pods the
    // requests named (or could have disturbed) keep working.
    assert!(
        mesh.tunnel_mut("n1").try_wait().unwrap().is_none(),
        "the tunnel exited"
    );
    assert_eventually!(
        procstat::fd_count(mesh.tunnel("n1").pid()).unwrap() <= fds_before,
        Duration::from_secs(5)
    );
    echo_roundtrip(&mut live, b"after").expect("live connection after bad requests");
    echo_once(&mesh, "client", server_addr(), b"new").expect("new connection from client");
    echo_once(&mesh, "client2", server_addr(), b"new").expect("new connection from client2");
    // The connection to the agent is still usable.
    assert_ok(
        &mesh.agent("n1").del("uid-never-added"),
        "del of an unknown uid",
    );
    assert!(mesh.tunnel("n1").is_ready());
}

/// The uids `/config_dump` lists as running pods on `node`.
fn running_pods(mesh: &Mesh, node: &str) -> Vec<String> {
    let dump = mesh.config_dump(node);
    dump["pods"]
        .as_array()
        .map(|pods| {
            pods.iter()
                .filter_map(|p| p["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An AddWorkload without `workload_info` is refused with an error ack, as ztunnel refuses it,
/// and the pod is not served at all — never as "any workload of this node": its in-pod rules
/// keep redirecting to :15001, where nothing listens. Told who it is, the same pod is served.
#[test]
fn an_add_without_workload_info_is_refused_and_the_pod_is_not_served() {
    let Some(mut mesh) = Mesh::start("inpod_no_info") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let uid = uid_of(mesh.pod("client2"));
    echo_once(&mesh, "client2", server_addr(), b"enrolled").expect("client2 while enrolled");
    assert_ok(&mesh.agent("n1").del(&uid), "del client2");
    mesh.assert_refused("client2", "after its del");

    let netns = std::fs::File::open(mesh.pod("client2").ns().path()).unwrap();
    let ack = mesh
        .agent("n1")
        .call(async |peer| peer.add(&uid, None, netns.as_fd()).await)
        .expect("add without workload info");
    let error = ack
        .error
        .expect("an add without workload info was acked as success");
    assert!(
        error.contains(&uid) && error.contains("workload_info is required"),
        "the error ack does not say what is missing: {error:?}"
    );
    mesh.assert_refused("client2", "after the refused add");
    assert!(
        !running_pods(&mesh, "n1").contains(&uid),
        "/config_dump lists the refused pod"
    );
    assert!(mesh.tunnel("n1").is_ready(), "a refused add cost readiness");

    let (path, info) = {
        let pod = mesh.pod("client2");
        (pod.ns().path(), info_of(pod))
    };
    assert_ok(
        &mesh.agent("n1").add_as(&uid, &path, &info),
        "add with info",
    );
    echo_once(&mesh, "client2", server_addr(), b"back").expect("client2 enrolled again");
}

#[test]
fn two_hundred_pods_added_and_removed_leak_no_fds_and_no_threads() {
    let Some(mut mesh) = Mesh::start_with("inpod_churn", &[("DRAIN_TIMEOUT", "1s")]) else {
        return;
    };
    // Four spare pod namespaces on n1, reused round-robin by 200 enrolments.
    let mut spare = Vec::new();
    for i in 0..4u8 {
        let name = format!("churn{i}");
        mesh.topo
            .add_pod("n1", &name, Ipv4Addr::new(10, 77, 1, 100 + i), true)
            .expect("adding a pod");
        spare.push(name);
    }
    let pid = mesh.tunnel("n1").pid();
    let cycle = |mesh: &mut Mesh, i: usize| {
        let uid = format!("churn-uid-{i}");
        let pod_name = spare[i % spare.len()].clone();
        let info = WorkloadInfo {
            name: pod_name.clone(),
            namespace: "default".into(),
            service_account: pod_name.clone(),
        };
        let path = mesh.pod(&pod_name).ns().path();
        let agent = mesh.agent("n1");
        assert_ok(&agent.add_as(&uid, &path, &info), &format!("add {uid}"));
        assert_ok(&agent.del(&uid), &format!("del {uid}"));
    };
    // Warm up (netns worker threads, lazily created state), then take the baseline.
    cycle(&mut mesh, 0);
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = procstat::fd_count(pid).unwrap();
    let threads_before = procstat::thread_count(pid).unwrap();
    for i in 1..=200 {
        cycle(&mut mesh, i);
    }
    // Drains finish in the background; then everything must be back to the baseline.
    assert_eventually!(
        procstat::fd_count(pid).unwrap() <= fds_before,
        Duration::from_secs(15)
    );
    assert_eventually!(
        procstat::thread_count(pid).unwrap() <= threads_before,
        Duration::from_secs(15)
    );
    for name in &spare {
        let listening = mesh.pod(name).ns().exec("ss", &["-Hltn"]).unwrap();
        assert_eq!(listening.trim(), "", "listeners left in {name}");
    }
    // And the node still serves its real pods.
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    echo_once(&mesh, "client", server_addr(), b"after churn").expect("client → server");
}

#[test]
fn re_adding_a_pod_is_a_no_op_in_the_same_netns_and_a_replacement_in_a_new_one() {
    let Some(mut mesh) = Mesh::start("inpod_readd") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let mut live = mesh.connect("client", server_addr()).expect("connect");
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_roundtrip(&mut live, b"before").expect("echo");

    // Same uid, same namespace: acknowledged, nothing restarts.
    let (uid, path, info) = {
        let pod = mesh.pod("client");
        (uid_of(pod), pod.ns().path(), info_of(pod))
    };
    assert_ok(
        &mesh.agent("n1").add_as(&uid, &path, &info),
        "same add again",
    );
    echo_roundtrip(&mut live, b"after re-add").expect("live connection after a no-op add");
    echo_once(&mesh, "client", server_addr(), b"new").expect("new connection after a no-op add");

    // Same uid, new namespace (the pod sandbox was recreated): the old proxy is drained, the
    // new namespace gets listeners.
    mesh.topo
        .add_pod("n1", "client-new", Ipv4Addr::new(10, 77, 1, 12), true)
        .expect("adding the new sandbox");
    let new_path = mesh.pod("client-new").ns().path();
    assert_ok(
        &mesh.agent("n1").add_as(&uid, &new_path, &info),
        "add in a new netns",
    );
    mesh.assert_refused("client", "the old sandbox still accepts");
    let listening = mesh.pod("client-new").ns().exec("ss", &["-Hltn"]).unwrap();
    for port in [15001, 15006, 15008] {
        assert!(
            listening.contains(&format!(":{port} ")),
            "no :{port} listener in the new sandbox:\n{listening}"
        );
    }
    live.set_read_timeout(Some(DRAIN * 3)).unwrap();
    assert!(
        is_closed(&mut live),
        "the replaced proxy's connection survived its drain"
    );
}

#[test]
fn passthrough_to_a_non_mesh_pod_leaves_from_the_pod_with_its_own_address() {
    let Some(mesh) = Mesh::start("inpod_passthrough") else {
        return;
    };
    let plain = mesh.server("plain", SERVER_PORT, echo_handler);
    let dst: SocketAddr = (addr::NON_MESH, SERVER_PORT).into();
    echo_once(&mesh, "client", dst, b"plain tcp").expect("client → non-mesh pod");
    // The tunnel's upstream socket lives in the client pod (marked, so the rules let it out)
    // and uses the pod's address: the non-mesh server sees the client pod, not the node.
    assert_eq!(peer_ips(&plain), vec![IpAddr::from(addr::CLIENT)]);
    let line = mesh.tunnel("n1").wait_access_line(
        &[("direction", "outbound"), ("protocol", "TCP")],
        Duration::from_secs(10),
    );
    assert!(line.contains(&dst.to_string()), "{line}");
    assert_eq!(mesh.established_on("plain", 15008), 0);
}

/// Resources of the Address type the tunnel on `node` holds (its `/metrics`).
fn address_resources(mesh: &Mesh, node: &str) -> Option<u64> {
    let (_, body) = mesh
        .tunnel(node)
        .ns()
        .run(|| nodetunnel_testbed::tunnel::http_get(nodetunnel_testbed::port::METRICS, "/metrics"))
        .ok()?;
    body.lines()
        .filter(|l| {
            l.starts_with("nodetunnel_xds_resources") && l.contains("istio.workload.Address")
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A pod enrolled (ZDS) before its workload reaches the tunnel over xDS connects at once: the
/// tunnel holds the connection (up to 5 s, as ztunnel) until the workload arrives, instead of
/// refusing it.
#[test]
fn a_pod_connecting_before_its_workload_arrives_is_served_once_it_does() {
    let Some(mesh) = Mesh::start("inpod_wait_workload") else {
        return;
    };
    let _server = mesh.server("server", SERVER_PORT, echo_handler);
    let config = mesh.topo.path("mesh.yaml");
    let full = MeshConfig::standard(SERVER_PORT);
    let before = address_resources(&mesh, "n1").expect("the address count");
    // client2 stays enrolled, but the control plane forgets its workload.
    let mut without = full.clone();
    without.workloads.retain(|w| w.name != "client2");
    without.write(&config).expect("rewriting the mesh config");
    assert_eventually!(
        address_resources(&mesh, "n1") == Some(before - 1),
        Duration::from_secs(20),
        "n1 never dropped client2's workload"
    );

    // client2 connects while its workload is unknown: the tunnel's capture listener accepts
    // and holds the connection ...
    let mut s = mesh
        .connect("client2", server_addr())
        .expect("connecting from client2");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // ... a moment passes (a refusing tunnel would have closed it by now) ...
    std::thread::sleep(Duration::from_millis(500));
    // ... and the workload arrives.
    full.write(&config).expect("restoring the mesh config");
    echo_roundtrip(&mut s, b"held until my workload arrived")
        .expect("the held connection is carried once the workload arrives");
}
