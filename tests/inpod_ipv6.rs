//! Dual-stack shared mode: the in-pod topology with IPv6 twins of every address
//! (`PodTopology::builder(..).dual_stack()`), the CNI agent's rules for both families (its own
//! code, IPv6 on as `AMBIENT_IPV6` defaults), one real `nodetunnel` per node fed by
//! `nodetunnel-zds-agent`, and workloads that carry both addresses.
//!
//! IPv6 addresses (`inpod::v6_of`): client fd77::1:0:0:a on n1, server fd77::2:0:0:a and the
//! non-mesh pod plain fd77::2:0:0:14 on n2.
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodetunnel_testbed::inpod::{v6_of, InpodMesh, InpodRules, MeshBins, PodTopology};
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, generate_ca, namespaces_available, sibling_binary, Ca, ControlPlane, Mesh, MeshConfig,
    Server,
};

const SERVER_PORT: u16 = 8080;
const LOG_DEADLINE: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn control_bin() -> PathBuf {
    sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

/// Field order is drop order: the tunnels (with their log tails) before the topology.
struct DualStack {
    mesh: InpodMesh,
    _control: ControlPlane,
    topo: PodTopology,
}

fn start(test: &str) -> Option<DualStack> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = PodTopology::builder(test)
        .node("n1", addr::NODE1)
        .node("n2", addr::NODE2)
        .link("n1", "n2")
        .pod("n1", "client", addr::CLIENT)
        .pod("n2", "server", addr::SERVER)
        .non_mesh("n2", "plain", addr::NON_MESH)
        .rules(InpodRules::Apply)
        .dual_stack()
        .build()
        .expect("building the dual-stack topology");
    let config = topo.path("mesh.yaml");
    let mut mesh_config = MeshConfig::standard(SERVER_PORT);
    mesh_config.remove_workload("client2");
    for (name, ip) in [("client", addr::CLIENT), ("server", addr::SERVER)] {
        mesh_config.workload_mut(name).ips6.push(v6_of(ip));
    }
    mesh_config.write(&config).expect("writing the mesh config");
    let ca = topo.path("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA dir");
    generate_ca(bin(), &ca).expect("nodetunnel generate-ca");
    let control = topo
        .start_control_plane("n1", &control_bin(), &config, &ca, &[])
        .expect("starting the control plane");
    let zds_agent = sibling_binary(nodetunnel_testbed::ZDS_AGENT_BIN).expect("the ZDS agent");
    let bins = MeshBins {
        tunnel: bin(),
        zds_agent: &zds_agent,
    };
    let mesh = InpodMesh::start(
        &topo,
        bins,
        Mesh::Control(&control),
        Ca::Control(&control),
        &[],
    )
    .expect("both tunnels ready with every pod enrolled");
    Some(DualStack {
        mesh,
        _control: control,
        topo,
    })
}

impl DualStack {
    fn ip6(&self, pod: &str) -> Ipv6Addr {
        self.topo.pod(pod).ip6().expect("a dual-stack pod")
    }

    /// Connects over IPv6 from inside pod `from` (bound to its IPv6 address) to `dst`.
    fn connect6(&self, from: &str, dst: SocketAddr) -> io::Result<TcpStream> {
        let src = SocketAddr::new(self.ip6(from).into(), 0);
        self.topo.ns(from).run(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&src.into())?;
            socket.connect_timeout(&dst.into(), Duration::from_secs(10))?;
            let stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(stream)
        })
    }

    fn server6(&self, pod: &str) -> Server {
        let addr = SocketAddr::new(self.ip6(pod).into(), SERVER_PORT);
        Server::start(self.topo.ns(pod), addr, echo_handler).expect("starting the IPv6 server")
    }
}

#[test]
fn ipv6_pod_to_pod_crosses_hbone_with_the_client_identity() {
    let Some(ds) = start("inpod_ipv6_hbone") else {
        return;
    };
    let server = ds.server6("server");
    let dst = SocketAddr::new(ds.ip6("server").into(), SERVER_PORT);
    let mut s = ds
        .connect6("client", dst)
        .expect("IPv6 from the client pod");
    for i in 0..3u8 {
        echo_roundtrip(&mut s, &[i; 200_000]).expect("byte-exact IPv6 echo");
    }
    // While it is open: the server pod holds an HBONE connection on :15008 from the client
    // pod's IPv6 address (the tunnel's upstream socket lives in the client pod).
    let hbone = ds
        .topo
        .ns("server")
        .established("sport = :15008")
        .expect("ss");
    let client6 = ds.ip6("client").to_string();
    assert!(
        hbone.iter().any(|l| l.contains(&client6)),
        "no HBONE from the client pod into the server pod over IPv6: {hbone:?}"
    );
    // The app sees the client pod's IPv6 address (delivered transparently), never the
    // tunnel's, and so never a plaintext connection that skipped the tunnel on n2.
    assert_eq!(
        server.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::V6(ds.ip6("client"))]
    );
    drop(s);
    let inbound = ds.mesh.tunnel("n2").wait_access_line(
        &[("direction", "inbound"), ("protocol", "HBONE")],
        LOG_DEADLINE,
    );
    assert!(
        inbound.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{inbound}"
    );
    assert!(inbound.contains(&client6), "{inbound}");
    let outbound = ds.mesh.tunnel("n1").wait_access_line(
        &[("direction", "outbound"), ("protocol", "HBONE")],
        LOG_DEADLINE,
    );
    assert!(
        outbound.contains("spiffe://cluster.local/ns/default/sa/server"),
        "{outbound}"
    );
    assert!(
        outbound.contains(&ds.ip6("server").to_string()),
        "{outbound}"
    );
}

#[test]
fn ipv6_to_a_pod_outside_the_mesh_is_passed_through_from_the_pods_own_address() {
    let Some(ds) = start("inpod_ipv6_passthrough") else {
        return;
    };
    let plain = ds.server6("plain");
    let dst = SocketAddr::new(ds.ip6("plain").into(), SERVER_PORT);
    let mut s = ds
        .connect6("client", dst)
        .expect("IPv6 to the non-mesh pod");
    echo_roundtrip(&mut s, b"plain tcp over ipv6").expect("echo");
    assert_eq!(
        plain.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::V6(ds.ip6("client"))]
    );
    drop(s);
    // Captured like IPv4: the tunnel on n1 handled it (outbound TCP, not HBONE).
    let line = ds.mesh.tunnel("n1").wait_access_line(
        &[("direction", "outbound"), ("protocol", "TCP")],
        LOG_DEADLINE,
    );
    assert!(line.contains(&ds.ip6("plain").to_string()), "{line}");
    assert_eq!(
        ds.topo
            .ns("plain")
            .established_on_local_port(15008)
            .expect("ss"),
        0
    );
}
