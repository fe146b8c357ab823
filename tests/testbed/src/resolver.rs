//! A resolver stand-in for the DNS proxy's tests: a small authoritative server on UDP and TCP
//! port 53 of one address in a test namespace, made that namespace's resolver (for daemons
//! started there afterwards: `ip netns exec` mounts `/etc/netns/<ns>/resolv.conf`) — or, with
//! [`ResolverStandIn::start_unlisted`], not (a pod's own nameserver that the tunnel does not know).
//!
//! Zone (all under `example.org`, answers deterministic so a test can byte-compare a reply
//! through the proxy with one asked directly):
//! - `outside.example.org`: A 192.0.2.1, TXT "stand-in";
//! - `_http._tcp.outside.example.org`: SRV 10 5 8080 outside.example.org;
//! - `big.example.org`: [`BIG_RECORDS`] A records, sent whole even over UDP (ignoring the
//!   client's size, as a misbehaving upstream would), so the proxy must truncate;
//! - `silent.example.org` (and anything under it): never answered;
//! - anything else: NXDOMAIN.
//!
//! Every query's source address is recorded ([`ResolverStandIn::sources`]).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// How many A records `big.example.org` has: far over 512 bytes.
pub const BIG_RECORDS: u8 = 100;
const TTL: u32 = 60;
const POLL: Duration = Duration::from_millis(100);

type Sources = Arc<Mutex<Vec<(String, RecordType, IpAddr, &'static str)>>>;

/// The running stand-in; stopped and its resolv.conf removed on drop.
pub struct ResolverStandIn {
    addr: SocketAddr,
    sources: Sources,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The `/etc/netns/<ns>` directory holding the resolv.conf this stand-in wrote, if any.
    etc_dir: Option<PathBuf>,
}

impl ResolverStandIn {
    /// Serves on `ip`:53 (UDP and TCP) inside `ns` and writes `nameserver <ip>` as `ns`'s
    /// resolv.conf.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<ResolverStandIn> {
        let etc_dir = PathBuf::from("/etc/netns").join(ns.name());
        fs::create_dir_all(&etc_dir)
            .map_err(|e| Error::io(format!("creating {}", etc_dir.display()), e))?;
        let conf = etc_dir.join("resolv.conf");
        fs::write(&conf, format!("nameserver {ip}\n"))
            .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
        Self::serve(ns, ip, Some(etc_dir))
    }

    /// Serves on `ip`:53 inside `ns` without touching any resolv.conf: a second resolver,
    /// one that a pod addresses but that the namespace's daemons do not know.
    pub fn start_unlisted(ns: &Netns, ip: Ipv4Addr) -> Result<ResolverStandIn> {
        Self::serve(ns, ip, None)
    }

    fn serve(ns: &Netns, ip: Ipv4Addr, etc_dir: Option<PathBuf>) -> Result<ResolverStandIn> {
        let addr = SocketAddr::from((ip, 53));
        let (udp, tcp) = ns
            .run(move || Ok::<_, io::Error>((UdpSocket::bind(addr)?, TcpListener::bind(addr)?)))
            .map_err(|e| Error::io(format!("binding {addr} in {}", ns.name()), e))?;
        udp.set_read_timeout(Some(POLL))
            .map_err(|e| Error::io("DNS stand-in socket timeout", e))?;
        tcp.set_nonblocking(true)
            .map_err(|e| Error::io("DNS stand-in listener", e))?;
        let sources: Sources = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = vec![
            {
                let (sources, stopping) = (sources.clone(), stopping.clone());
                std::thread::spawn(move || serve_udp(udp, sources, stopping))
            },
            {
                let (sources, stopping) = (sources.clone(), stopping.clone());
                std::thread::spawn(move || serve_tcp(tcp, sources, stopping))
            },
        ];
        Ok(ResolverStandIn {
            addr,
            sources,
            stopping,
            threads,
            etc_dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// (name, type, source address, "udp"/"tcp") of every query received, in order.
    pub fn sources(&self) -> Vec<(String, RecordType, IpAddr, &'static str)> {
        self.sources.lock().unwrap().clone()
    }
}

impl Drop for ResolverStandIn {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(etc_dir) = &self.etc_dir {
            let _ = fs::remove_dir_all(etc_dir);
        }
    }
}

fn serve_udp(socket: UdpSocket, sources: Sources, stopping: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65_535];
    while !stopping.load(Ordering::Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..len], peer.ip(), "udp", &sources) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, sources: Sources, stopping: Arc<AtomicBool>) {
    while !stopping.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let sources = sources.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, peer.ip(), &sources);
                });
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve_connection(mut stream: TcpStream, peer: IpAddr, sources: &Sources) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut query)?;
        if let Some(reply) = answer(&query, peer, "tcp", sources) {
            stream.write_all(&(reply.len() as u16).to_be_bytes())?;
            stream.write_all(&reply)?;
        }
    }
}

fn answer(
    query: &[u8],
    peer: IpAddr,
    transport: &'static str,
    sources: &Sources,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    sources
        .lock()
        .unwrap()
        .push((name.clone(), question.query_type(), peer, transport));
    if name == "silent.example.org" || name.ends_with(".silent.example.org") {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.queries = request.queries.clone();
    let owner = question.name().clone();
    let record = |rdata| Record::from_rdata(owner.clone(), TTL, rdata);
    let outside = Name::from_ascii("outside.example.org.").expect("a valid name");
    match (name.as_str(), question.query_type()) {
        ("outside.example.org", RecordType::A) => {
            reply.add_answer(record(RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
        }
        ("outside.example.org", RecordType::TXT) => {
            reply.add_answer(record(RData::TXT(TXT::new(vec!["stand-in".into()]))));
        }
        ("_http._tcp.outside.example.org", RecordType::SRV) => {
            reply.add_answer(record(RData::SRV(SRV::new(10, 5, 8080, outside))));
        }
        ("big.example.org", RecordType::A) => {
            for i in 0..BIG_RECORDS {
                reply.add_answer(record(RData::A(A(Ipv4Addr::new(198, 51, 100, i)))));
            }
        }
        ("outside.example.org" | "_http._tcp.outside.example.org" | "big.example.org", _) => {}
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}
