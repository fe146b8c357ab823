//! A small authoritative DNS server inside a test namespace, and the namespace's resolver
//! configuration pointing at it, for tests of endpoints known by hostname only.
//!
//! `ip netns exec <ns>` (how the test bed starts daemons) bind-mounts each file of
//! `/etc/netns/<ns>/` over its `/etc` namesake, so a daemon started in `ns` after
//! [`DnsServer::start`] reads `nameserver 127.0.0.1` from its `/etc/resolv.conf` and asks this
//! server, and nothing else on the machine is affected. The directory is removed on drop.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// Answers' TTL: short, so a test that changes a record is not stuck behind a cache for long.
const TTL: u32 = 5;

/// Names (lower case, without the trailing dot) → their A records, shared with the server.
type Records = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// A DNS server answering A queries for the records it was given on 127.0.0.1:53 of one
/// namespace; every other name gets NXDOMAIN, AAAA of a known name an empty answer.
pub struct DnsServer {
    records: Records,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    etc_dir: PathBuf,
}

impl DnsServer {
    /// Serves `records` in `ns` and makes it `ns`'s resolver (for processes started there
    /// from now on).
    pub fn start(ns: &Netns, records: &[(&str, Ipv4Addr)]) -> Result<DnsServer> {
        let etc_dir = PathBuf::from("/etc/netns").join(ns.name());
        fs::create_dir_all(&etc_dir)
            .map_err(|e| Error::io(format!("creating {}", etc_dir.display()), e))?;
        let conf = etc_dir.join("resolv.conf");
        fs::write(
            &conf,
            "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n",
        )
        .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
        let socket = ns
            .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 53))))
            .map_err(|e| Error::io(format!("binding 127.0.0.1:53/udp in {}", ns.name()), e))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| Error::io("setting the DNS socket's timeout", e))?;
        let mut map = HashMap::new();
        for (name, ip) in records {
            map.entry(normalize(name))
                .or_insert_with(Vec::new)
                .push(*ip);
        }
        let records: Records = Arc::new(Mutex::new(map));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (records, queries, stopping) = (records.clone(), queries.clone(), stopping.clone());
            std::thread::spawn(move || serve(socket, records, queries, stopping))
        };
        Ok(DnsServer {
            records,
            queries,
            stopping,
            thread: Some(thread),
            etc_dir,
        })
    }

    /// Replaces `name`'s A records (empty: the name no longer exists).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut records = self.records.lock().unwrap();
        if ips.is_empty() {
            records.remove(&normalize(name));
        } else {
            records.insert(normalize(name), ips.to_vec());
        }
    }

    /// How many A queries for `name` were received.
    pub fn a_queries(&self, name: &str) -> usize {
        let name = normalize(name);
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| *n == name && *t == RecordType::A)
            .count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_dir_all(&self.etc_dir);
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(
    socket: UdpSocket,
    records: Records,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    stopping: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 1500];
    while !stopping.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let reply = answer(&request, &records, &queries);
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

fn answer(
    request: &Message,
    records: &Records,
    queries: &Mutex<Vec<(String, RecordType)>>,
) -> Message {
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.queries = request.queries.clone();
    let Some(query) = request.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    let name = normalize(&query.name().to_ascii());
    queries
        .lock()
        .unwrap()
        .push((name.clone(), query.query_type()));
    match records.lock().unwrap().get(&name) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) if query.query_type() == RecordType::A => {
            for ip in ips {
                reply.answers.push(Record::from_rdata(
                    query.name().clone(),
                    TTL,
                    RData::A(A(*ip)),
                ));
            }
        }
        // The name exists but has no record of this type: NOERROR with no answer.
        Some(_) => {}
    }
    reply
}
