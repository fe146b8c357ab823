//! One query in, one reply out (or nothing): decode, answer from the mesh or forward, encode.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::answer::{self, Family, MeshAnswer};
use super::forward::{ForwardError, Upstream};
use super::names;
use super::origin::{self, Arrival};
use super::truncate::{client_limit, encode_within, CLASSIC_UDP_SIZE};
use crate::metrics::Metrics;
use crate::socket::SocketFactory;
use crate::state::StateHandle;

/// TTL of answers from the mesh state: short, since the state can change at any push
/// (ztunnel's value).
pub(crate) const MESH_TTL: u32 = 30;

/// How the query arrived; the reply goes back the same way, and a forward uses it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Everything one scope's DNS proxy answers with.
pub(crate) struct Handler {
    pub state: StateHandle,
    /// The client's namespace when the scope is one workload (a pod in shared mode,
    /// `PROXY_WORKLOAD_INFO` in dedicated mode); `None`: found by the client's address.
    pub namespace: Option<String>,
    pub network: String,
    pub cluster_domain: String,
    pub upstream: Arc<Upstream>,
    /// Where forwarded queries' sockets are opened (the pod's namespace, marked).
    pub sockets: SocketFactory,
    pub metrics: Arc<Metrics>,
}

impl Handler {
    /// The reply to `packet` from `client`, or `None` when it is dropped: shorter than a DNS
    /// header, or itself a response (answering those would let two resolvers loop).
    pub(crate) async fn handle(
        &self,
        packet: &[u8],
        client: SocketAddr,
        arrival: &Arrival,
    ) -> Option<Vec<u8>> {
        let transport = arrival.transport();
        let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
        if header.metadata.message_type == MessageType::Response {
            return None;
        }
        self.metrics.dns_requests.inc();
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(_) => return error_reply(&header, None, ResponseCode::FormErr),
        };
        let limit = match transport {
            Transport::Udp => client_limit(&request),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if let Some(reply) = self.answer_locally(&request, client.ip()) {
            return encode_within(reply, limit).ok();
        }
        self.metrics.dns_upstream_requests.inc();
        let addressed = origin::addressed(arrival, client, &self.sockets);
        let forwarded = match self.upstream.choose(addressed, arrival.local(client)) {
            Ok(upstream) => match transport {
                Transport::Udp => self.upstream.udp(&self.sockets, upstream, packet).await,
                Transport::Tcp => self.upstream.tcp(&self.sockets, upstream, packet).await,
            },
            Err(error) => Err(error),
        };
        match forwarded {
            Ok(reply) => fit_reply(&request, reply, limit),
            Err(error) => {
                self.metrics.dns_upstream_failures.inc();
                log_failure(&error);
                error_reply(&header, Some(&request), ResponseCode::ServFail)
            }
        }
    }

    /// The reply from the mesh state, when the query is an A or AAAA (class IN, one question)
    /// for a name the mesh has addresses for; `None` sends it upstream.
    fn answer_locally(&self, request: &Message, client: IpAddr) -> Option<Message> {
        if request.metadata.op_code != OpCode::Query || request.queries.len() != 1 {
            return None;
        }
        let query = &request.queries[0];
        let family = match query.query_type() {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            _ => return None,
        };
        if query.query_class() != DNSClass::IN {
            return None;
        }
        let name = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let found = {
            let store = self.state.read();
            let namespace = match &self.namespace {
                Some(namespace) => Some(namespace.clone()),
                None => store
                    .workload_by_ip(&self.network, client)
                    .map(|w| w.namespace.clone()),
            };
            let candidates = names::candidates(&name, namespace.as_deref(), &self.cluster_domain);
            answer::lookup(
                &store,
                &candidates,
                namespace.as_deref().unwrap_or(""),
                family,
            )
        };
        let MeshAnswer::Addresses(addrs) = found else {
            return None;
        };
        let mut reply = response_to(request, ResponseCode::NoError);
        reply.metadata.authoritative = true;
        for ip in addrs {
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            reply.add_answer(Record::from_rdata(query.name().clone(), MESH_TTL, rdata));
        }
        Some(reply)
    }
}

/// The upstream's `reply` to `request` as the client gets it: unchanged when it fits `limit`;
/// larger (an upstream ignoring the client's EDNS size) it is cut to fit, or, when it does
/// not even decode, replaced by the question alone with TC set.
pub(crate) fn fit_reply(request: &Message, reply: Vec<u8>, limit: usize) -> Option<Vec<u8>> {
    if reply.len() <= limit {
        return Some(reply);
    }
    match Message::from_vec(&reply) {
        Ok(parsed) => encode_within(parsed, limit).ok(),
        Err(_) => truncated_reply(request),
    }
}

/// An empty response to `request` with `code`: same id and question, RD echoed, RA set, and
/// an OPT record when the request had one.
fn response_to(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.queries = request.queries.clone();
    if let Some(asked) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(asked.max_payload().max(CLASSIC_UDP_SIZE as u16));
        edns.set_dnssec_ok(asked.flags().dnssec_ok);
        reply.set_edns(edns);
    }
    reply
}

/// An error reply: with the question when the request decoded, else the header alone.
fn error_reply(header: &Header, request: Option<&Message>, code: ResponseCode) -> Option<Vec<u8>> {
    let reply = match request {
        Some(request) => response_to(request, code),
        None => {
            let mut reply = Message::error_msg(header.metadata.id, header.metadata.op_code, code);
            reply.metadata.recursion_desired = header.metadata.recursion_desired;
            reply
        }
    };
    reply.to_vec().ok()
}

/// The question alone with TC set: the client retries over TCP.
fn truncated_reply(request: &Message) -> Option<Vec<u8>> {
    let mut reply = response_to(request, ResponseCode::NoError);
    reply.metadata.truncation = true;
    reply.to_vec().ok()
}

fn log_failure(error: &ForwardError) {
    match error {
        // Already logged, rate-limited, where the budget is checked.
        ForwardError::Busy => {}
        other => tracing::debug!(error = %other, "DNS proxy: forwarding failed; SERVFAIL"),
    }
}

#[cfg(test)]
mod tests;
