//! The DNS proxy end to end, in shared mode: real pod namespaces whose in-pod rules capture
//! DNS (the CNI agent's own rules with DNS capture on, UDP and TCP port 53 → 15053), a real
//! `nodetunnel` per node, and a resolver stand-in (`testbed::resolver`) in node n1's namespace
//! at 10.77.1.1:53 — the tunnel's own resolv.conf names it, and it is also where the pod's
//! queries are addressed (as a pod's resolv.conf names the cluster DNS). One test adds a second
//! stand-in at 10.77.53.53 that only the pod addresses (a pod's own `dnsConfig`).
//!
//! Topology: `PodTopology::two_node` (client 10.77.1.10 on n1, server 10.77.2.10 on n2,
//! service `server.default.svc.cluster.local` VIP 10.96.0.10:80 → 8080).
//!
//! Needs root; without it each test prints "skipped: needs root" (and fails under CI=true).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use nodetunnel_testbed::inpod::{
    apply_inpod_rules_with_dns_capture, InpodMesh, InpodRules, MeshBins, PodTopology,
};
use nodetunnel_testbed::resolver::{ResolverStandIn, BIG_RECORDS};
use nodetunnel_testbed::traffic::{echo_handler, echo_roundtrip};
use nodetunnel_testbed::{
    addr, assert_eventually, connect_from, generate_ca, namespaces_available, sibling_binary, Ca,
    ControlPlane, Mesh, MeshConfig, Server,
};

const SERVER_PORT: u16 = 8080;
/// Longer than the proxy's upstream timeout (5 s), so a SERVFAIL for a silent upstream arrives.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);
/// Where the pod sends its queries: the node's address, port 53 (captured to 15053).
const POD_NAMESERVER: SocketAddr = SocketAddr::new(IpAddr::V4(addr::NODE1), 53);
/// A second resolver, on an extra address of node n1: a pod's own nameserver (its
/// `dnsConfig`), which the tunnel's resolv.conf does not name.
const OWN_NAMESERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 53, 53);
/// The proxy's address in the pod, asked directly (no capture rule matches it).
const PROXY_DIRECT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15053);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodetunnel"))
}

fn control_bin() -> PathBuf {
    sibling_binary("nodetunnel-control").expect("the nodetunnel-control binary")
}

/// Field order is drop order: tunnels, control plane and resolver before the topology.
struct DnsMesh {
    mesh: InpodMesh,
    _control: ControlPlane,
    resolver: ResolverStandIn,
    topo: PodTopology,
}

fn start(test: &str) -> Option<DnsMesh> {
    if !namespaces_available(test) {
        return None;
    }
    let topo = PodTopology::two_node(test, InpodRules::Apply).expect("building the topology");
    apply_inpod_rules_with_dns_capture(topo.pod("client").ns()).expect("DNS capture rules");
    // Before the tunnels start: they read this resolv.conf.
    let resolver =
        ResolverStandIn::start(topo.node_ns("n1"), addr::NODE1).expect("the resolver stand-in");
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
    Some(DnsMesh {
        mesh,
        _control: control,
        resolver,
        topo,
    })
}

impl DnsMesh {
    /// Sends `packet` over UDP from the client pod to its nameserver (captured); the reply,
    /// or `None` when none came within [`CLIENT_TIMEOUT`].
    fn udp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.udp_to(POD_NAMESERVER, packet)
    }

    /// Sends `packet` over TCP (length-prefixed) from the client pod to its nameserver.
    fn tcp(&self, packet: &[u8]) -> Vec<u8> {
        self.tcp_to(POD_NAMESERVER, packet)
    }

    /// Sends `packet` over UDP from the client pod to `to`.
    fn udp_to(&self, to: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
        let packet = packet.to_vec();
        self.topo
            .pod("client")
            .ns()
            .run(move || udp_exchange(to, &packet))
            .expect("UDP from the pod")
    }

    /// Sends `packet` over TCP from the client pod to `to`.
    fn tcp_to(&self, to: SocketAddr, packet: &[u8]) -> Vec<u8> {
        let packet = packet.to_vec();
        self.topo
            .pod("client")
            .ns()
            .run(move || tcp_exchange(to, &packet))
            .expect("TCP from the pod")
    }

    /// Sends `packet` to the stand-in directly from the node's namespace (no proxy).
    fn direct_udp(&self, packet: &[u8]) -> Vec<u8> {
        let (packet, to) = (packet.to_vec(), self.resolver.addr());
        self.topo
            .node_ns("n1")
            .run(move || udp_exchange(to, &packet))
            .expect("UDP to the stand-in")
            .expect("the stand-in answers")
    }

    fn direct_tcp(&self, packet: &[u8]) -> Vec<u8> {
        let (packet, to) = (packet.to_vec(), self.resolver.addr());
        self.topo
            .node_ns("n1")
            .run(move || tcp_exchange(to, &packet))
            .expect("TCP to the stand-in")
    }
}

fn udp_exchange(to: SocketAddr, packet: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    socket.send(packet)?;
    let mut buf = vec![0u8; 65_535];
    match socket.recv(&mut buf) {
        Ok(len) => Ok(Some(buf[..len].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn tcp_exchange(to: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&to, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        q.set_edns(e);
    }
    q.to_vec().unwrap()
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("the reply decodes")
}

fn a_records(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pod_resolves_a_mesh_service_by_short_name_and_fqdn_and_connects_to_its_vip() {
    let Some(m) = start("dns_mesh_names") else {
        return;
    };
    let server = {
        let pod = m.topo.pod("server");
        Server::start(pod.ns(), (pod.ip(), SERVER_PORT).into(), echo_handler).expect("server")
    };
    let vip = IpAddr::V4(addr::SERVICE_VIP);
    for transport in ["udp", "tcp"] {
        for name in [
            "server.default.svc.cluster.local.",
            "server.",
            "server.default.",
            "server.default.svc.",
        ] {
            let packet = query(name, RecordType::A, None);
            let bytes = match transport {
                "udp" => m.udp(&packet).expect("an answer"),
                _ => m.tcp(&packet),
            };
            let reply = parse(&bytes);
            assert_eq!(reply.metadata.id, parse(&packet).metadata.id);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert_eq!(a_records(&reply), vec![vip], "{transport} {name}");
        }
    }
    // The mesh has no IPv6 address for it: NODATA, not NXDOMAIN.
    let reply = parse(&m.udp(&query("server.", RecordType::AAAA, None)).unwrap());
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    // None of that reached the upstream.
    assert!(
        m.resolver
            .sources()
            .iter()
            .all(|(n, ..)| !n.starts_with("server")),
        "{:?}",
        m.resolver.sources()
    );
    // The answer is usable: the VIP connects through the tunnel to the server.
    let ip = m.topo.pod("client").ip();
    let mut s = m
        .topo
        .pod("client")
        .ns()
        .run(move || connect_from(ip, (vip, 80).into()))
        .expect("connecting to the resolved VIP");
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    echo_roundtrip(&mut s, b"resolved through the mesh").expect("echo through the tunnel");
    assert_eventually!(!server.peers().is_empty());
    drop(m.mesh);
}

#[test]
fn other_names_and_types_are_forwarded_unchanged_large_answers_truncate_and_silence_is_servfail() {
    let Some(m) = start("dns_forwarding") else {
        return;
    };
    let client_ip = IpAddr::V4(m.topo.pod("client").ip());
    // An outside A, TXT and SRV, and SRV of a mesh name (NXDOMAIN upstream): the proxy's reply
    // is byte for byte the stand-in's (the same query, the same id).
    for (name, rtype) in [
        ("outside.example.org.", RecordType::A),
        ("outside.example.org.", RecordType::TXT),
        ("_http._tcp.outside.example.org.", RecordType::SRV),
        ("server.default.svc.cluster.local.", RecordType::SRV),
        ("nowhere.example.org.", RecordType::A),
    ] {
        let packet = query(name, rtype, Some(1232));
        let via_proxy = m.udp(&packet).expect("a forwarded answer");
        assert_eq!(via_proxy, m.direct_udp(&packet), "UDP {name} {rtype}");
        assert_eq!(m.tcp(&packet), m.direct_tcp(&packet), "TCP {name} {rtype}");
    }
    let srv = parse(
        &m.udp(&query(
            "_http._tcp.outside.example.org.",
            RecordType::SRV,
            None,
        ))
        .unwrap(),
    );
    assert!(matches!(srv.answers[0].data, RData::SRV(ref s) if s.port == 8080));
    // The forwarded queries left from the pod (its namespace, its address), over the
    // client's transport.
    let sources = m.resolver.sources();
    let from_pod: Vec<_> = sources
        .iter()
        .filter(|(n, t, ip, _)| {
            n == "_http._tcp.outside.example.org" && *t == RecordType::SRV && *ip == client_ip
        })
        .map(|(.., transport)| *transport)
        .collect();
    assert!(
        from_pod.contains(&"udp") && from_pod.contains(&"tcp"),
        "{sources:?}"
    );

    // Large: the stand-in sends all records even over UDP; the proxy cuts to 512 with TC.
    let big = query("big.example.org.", RecordType::A, None);
    let udp = m.udp(&big).expect("a truncated answer");
    assert!(udp.len() <= 512, "{} bytes", udp.len());
    let udp = parse(&udp);
    assert!(udp.metadata.truncation);
    assert!(udp.answers.len() < usize::from(BIG_RECORDS));
    let tcp = parse(&m.tcp(&big));
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), usize::from(BIG_RECORDS));

    // Silent upstream: SERVFAIL after the proxy's timeout, over both transports.
    let silent = query("silent.example.org.", RecordType::A, None);
    let reply = parse(&m.udp(&silent).expect("SERVFAIL, not silence"));
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(
        parse(&m.tcp(&silent)).metadata.response_code,
        ResponseCode::ServFail
    );
    drop(m.mesh);
}

#[test]
fn forwarded_queries_go_to_the_nameserver_the_pod_addressed_and_direct_ones_to_the_tunnels() {
    let Some(m) = start("dns_pod_upstream") else {
        return;
    };
    let client_ip = IpAddr::V4(m.topo.pod("client").ip());
    let n1 = m.topo.node_ns("n1");
    n1.ip(&[
        "addr",
        "add",
        &format!("{OWN_NAMESERVER_IP}/32"),
        "dev",
        "lo",
    ])
    .expect("the second resolver's address on n1");
    // Dropped before `m` (declared after it): the pod's own resolver, unknown to the tunnel.
    let own = ResolverStandIn::start_unlisted(n1, OWN_NAMESERVER_IP).expect("the pod's resolver");
    // Queries of one resolver from the client pod for `name` over `transport`.
    let from_pod = |resolver: &ResolverStandIn, name: &str, transport: &str| {
        resolver
            .sources()
            .iter()
            .filter(|(n, _, ip, t)| n == name && *ip == client_ip && *t == transport)
            .count()
    };

    // Captured, to the pod's own nameserver: answered by that one, unchanged (both stand-ins
    // serve the same zone, so the reply equals the tunnel's resolver's asked directly).
    for (name, rtype) in [
        ("outside.example.org.", RecordType::A),
        ("outside.example.org.", RecordType::TXT),
        ("_http._tcp.outside.example.org.", RecordType::SRV),
    ] {
        let packet = query(name, rtype, Some(1232));
        let udp = m.udp_to(own.addr(), &packet).expect("a forwarded answer");
        assert_eq!(udp, m.direct_udp(&packet), "UDP {name} {rtype}");
        assert_eq!(
            m.tcp_to(own.addr(), &packet),
            m.direct_tcp(&packet),
            "TCP {name} {rtype}"
        );
    }
    let srv = parse(&m.tcp_to(
        own.addr(),
        &query("_http._tcp.outside.example.org.", RecordType::SRV, None),
    ));
    assert!(matches!(srv.answers[0].data, RData::SRV(ref s) if s.port == 8080));
    for name in ["outside.example.org", "_http._tcp.outside.example.org"] {
        for transport in ["udp", "tcp"] {
            assert!(
                from_pod(&own, name, transport) > 0,
                "{name} over {transport} reached the pod's resolver: {:?}",
                own.sources()
            );
            assert_eq!(
                from_pod(&m.resolver, name, transport),
                0,
                "{name} over {transport} went to the tunnel's resolver: {:?}",
                m.resolver.sources()
            );
        }
    }

    // Sent straight to the proxy (127.0.0.1:15053, not redirected): no other nameserver was
    // addressed, so the tunnel's resolv.conf names the upstream.
    let packet = query("direct.example.org.", RecordType::A, None);
    let udp = parse(&m.udp_to(PROXY_DIRECT, &packet).expect("an answer"));
    assert_eq!(udp.metadata.response_code, ResponseCode::NXDomain);
    let tcp = parse(&m.tcp_to(PROXY_DIRECT, &packet));
    assert_eq!(tcp.metadata.response_code, ResponseCode::NXDomain);
    for transport in ["udp", "tcp"] {
        assert_eq!(
            from_pod(&m.resolver, "direct.example.org", transport),
            1,
            "{transport}"
        );
        assert_eq!(
            from_pod(&own, "direct.example.org", transport),
            0,
            "{transport}"
        );
    }
    drop(own);
    drop(m.mesh);
}

#[test]
fn malformed_packets_get_formerr_or_nothing_the_proxy_keeps_answering_and_closes_with_the_pod() {
    let Some(m) = start("dns_malformed") else {
        return;
    };
    let good = query("server.", RecordType::A, None);
    let answers = |m: &DnsMesh| {
        let reply = parse(&m.udp(&good).expect("still answering"));
        a_records(&reply) == vec![IpAddr::V4(addr::SERVICE_VIP)]
    };
    assert!(answers(&m));
    let header_only = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut bad_label = header_only.to_vec();
    bad_label.extend_from_slice(&[0x50, b'a', b'b', 0, 0, 1, 0, 1]);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = || {
        (0..64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut packets: Vec<Vec<u8>> = vec![vec![0x12, 0x34, 0x01], header_only.to_vec(), bad_label];
    packets.extend((0..20).map(|_| random()));
    for packet in &packets[..3] {
        // Too short for a header: nothing; a header with a broken question: FORMERR.
        match m.udp(packet) {
            None => assert!(packet.len() < 12),
            Some(reply) => {
                let reply = parse(&reply);
                assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
                assert_eq!(reply.metadata.id, 0x1234);
            }
        }
    }
    // Random bytes: fire and forget (some may look like queries and be forwarded).
    let ns = m.topo.pod("client").ns();
    let random_packets = packets[3..].to_vec();
    ns.run(move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        for p in &random_packets {
            socket.send_to(p, POD_NAMESERVER)?;
        }
        io::Result::Ok(())
    })
    .expect("sending random bytes");
    // Over TCP, a garbage frame closes the connection at worst.
    let _ = ns.run(|| tcp_exchange(POD_NAMESERVER, &[0xff; 5]));
    assert!(answers(&m), "the proxy still answers after malformed input");
    assert!(
        m.mesh.tunnel("n1").is_ready(),
        "the tunnel is alive and ready"
    );
    // Unenrolled, the pod's 15053 sockets close with its other listeners: the captured query
    // now meets a closed port (TCP refused), not a proxy left behind in the pod's netns.
    m.mesh
        .del(m.topo.pod("client"))
        .expect("removing the client pod from its tunnel");
    let closed = || {
        let packet = good.clone();
        let refused = ns.run(move || tcp_exchange(POD_NAMESERVER, &packet));
        matches!(refused, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    };
    assert_eventually!(
        closed(),
        Duration::from_secs(10),
        "15053 closed with the pod"
    );
    drop(m.mesh);
}
