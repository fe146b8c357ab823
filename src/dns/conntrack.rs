//! Where a REDIRECTed UDP query was addressed: its flow's original destination, asked of the
//! kernel's connection tracking (ctnetlink, `IPCTNL_MSG_CT_GET` over `NETLINK_NETFILTER`).
//!
//! A REDIRECT rewrites a datagram's destination before the proxy's socket sees it, and UDP
//! has no `SO_ORIGINAL_DST`; `IP_RECVORIGDSTADDR` reports the header's destination after NAT
//! (the proxy's own address), so it cannot help either. The flow's conntrack entry keeps both
//! tuples: the proxy knows the reply tuple exactly (from its own address to the client's, as
//! `recvfrom` reports them), and the entry's original tuple holds the nameserver the client
//! sent to. The netlink socket is opened in the client's namespace (conntrack tables are per
//! namespace) for this one lookup and closed after it; nothing is cached per flow.
//!
//! The codec covers just this message: one request with the reply tuple, and the kernel's
//! answer (a `CT_NEW` message with the entry, or an `NLMSG_ERROR`). No crate in the tree
//! frames ctnetlink (`netlink-sys` gives the socket); every length in a reply is checked
//! before it is used, so a malformed reply is an error, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NetlinkAddr};

use crate::socket::SocketFactory;

const NLMSG_HEADER: usize = 16;
const NFGENMSG: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = 1 << 8 | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: the type of an entry the kernel sends.
const CT_NEW: u16 = 1 << 8;
const NLA_F_NESTED: u16 = 1 << 15;
/// Attribute type bits without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | 1 << 14);
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
/// Far more than one entry takes (a few hundred bytes); a longer reply is cut and refused.
const RECV_BUFFER: usize = 16 * 1024;

/// Why the original destination could not be found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConntrackError {
    #[error("the proxy's address {proxy} and the client's {client} are of different families")]
    Families {
        proxy: SocketAddr,
        client: SocketAddr,
    },
    #[error("conntrack netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("conntrack has no entry for the flow (errno {0})")]
    Kernel(i32),
    #[error("conntrack sent no reply")]
    NoReply,
    #[error("malformed conntrack reply: {0}")]
    Malformed(&'static str),
}

/// The destination the client at `client` addressed its datagram to, before the REDIRECT
/// that delivered it to the proxy at `proxy` (the flow's reply tuple is `proxy → client`),
/// looked up in the conntrack table of `sockets`' namespace.
pub(crate) fn original_destination(
    sockets: &SocketFactory,
    proxy: SocketAddr,
    client: SocketAddr,
) -> Result<SocketAddr, ConntrackError> {
    let seq: u32 = rand::random();
    let request = encode_get(seq, proxy, client)?;
    let socket = sockets
        .create_here(|| Socket::new(NETLINK_NETFILTER))
        .map_err(ConntrackError::Socket)?;
    socket
        .send_to(&request, &NetlinkAddr::new(0, 0), 0)
        .map_err(ConntrackError::Socket)?;
    // The kernel handles a netlink request within the sending call, so the reply is queued
    // by now: read without waiting (an async runtime thread must not block here).
    let mut reply = Vec::with_capacity(RECV_BUFFER);
    match socket.recv(&mut reply, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
        Ok(len) if len > reply.len() => Err(ConntrackError::Malformed("reply larger than 16 KiB")),
        Ok(_) => decode_reply(&reply, seq),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ConntrackError::NoReply),
        Err(e) => Err(ConntrackError::Socket(e)),
    }
}

/// The `CT_GET` request for the UDP entry whose reply tuple is `reply_src → reply_dst`.
fn encode_get(
    seq: u32,
    reply_src: SocketAddr,
    reply_dst: SocketAddr,
) -> Result<Vec<u8>, ConntrackError> {
    let family_mismatch = || ConntrackError::Families {
        proxy: reply_src,
        client: reply_dst,
    };
    let (family, ip) = match (reply_src.ip(), reply_dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = Vec::new();
            put_attr(&mut ip, CTA_IP_V4_SRC, &src.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &dst.octets());
            (libc::AF_INET as u8, ip)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = Vec::new();
            put_attr(&mut ip, CTA_IP_V6_SRC, &src.octets());
            put_attr(&mut ip, CTA_IP_V6_DST, &dst.octets());
            (libc::AF_INET6 as u8, ip)
        }
        _ => return Err(family_mismatch()),
    };
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[IPPROTO_UDP]);
    put_attr(
        &mut proto,
        CTA_PROTO_SRC_PORT,
        &reply_src.port().to_be_bytes(),
    );
    put_attr(
        &mut proto,
        CTA_PROTO_DST_PORT,
        &reply_dst.port().to_be_bytes(),
    );
    let mut tuple = Vec::new();
    put_attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut body = vec![family, 0, 0, 0]; // nfgenmsg: family, version 0, res_id 0
    put_attr(&mut body, CTA_TUPLE_REPLY | NLA_F_NESTED, &tuple);
    // No CTA_ZONE: the client's own (unmarked) query is tracked in the default zone.
    let len = (NLMSG_HEADER + body.len()) as u32;
    let mut message = Vec::with_capacity(len as usize);
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&CT_GET.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    message.extend_from_slice(&body);
    Ok(message)
}

/// Appends one attribute (native-endian length and type, the payload, padding to 4).
fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (4 + payload.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The original tuple's destination from the kernel's reply to request `seq`.
fn decode_reply(bytes: &[u8], seq: u32) -> Result<SocketAddr, ConntrackError> {
    let header = bytes
        .get(..NLMSG_HEADER)
        .ok_or(ConntrackError::Malformed("shorter than a netlink header"))?;
    let len = u32_at(header, 0) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    if len < NLMSG_HEADER || len > bytes.len() {
        return Err(ConntrackError::Malformed("netlink length out of bounds"));
    }
    if u32_at(header, 8) != seq {
        return Err(ConntrackError::Malformed("reply to another request"));
    }
    let body = &bytes[NLMSG_HEADER..len];
    if kind == NLMSG_ERROR {
        let errno = body
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(ConntrackError::Malformed("short error message"))?;
        return Err(ConntrackError::Kernel(-errno));
    }
    if kind != CT_NEW {
        return Err(ConntrackError::Malformed("not a conntrack entry"));
    }
    let attrs = body
        .get(NFGENMSG..)
        .ok_or(ConntrackError::Malformed("no nfgenmsg header"))?;
    let tuple =
        find(attrs, CTA_TUPLE_ORIG)?.ok_or(ConntrackError::Malformed("no original tuple"))?;
    let ip = find(tuple, CTA_TUPLE_IP)?.ok_or(ConntrackError::Malformed("no tuple address"))?;
    let proto = find(tuple, CTA_TUPLE_PROTO)?.ok_or(ConntrackError::Malformed("no tuple ports"))?;
    let addr = if let Some(v4) = find(ip, CTA_IP_V4_DST)? {
        let octets: [u8; 4] = v4
            .try_into()
            .map_err(|_| ConntrackError::Malformed("IPv4 address not 4 bytes"))?;
        IpAddr::V4(Ipv4Addr::from(octets))
    } else if let Some(v6) = find(ip, CTA_IP_V6_DST)? {
        let octets: [u8; 16] = v6
            .try_into()
            .map_err(|_| ConntrackError::Malformed("IPv6 address not 16 bytes"))?;
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        return Err(ConntrackError::Malformed("no destination address"));
    };
    let port: [u8; 2] = find(proto, CTA_PROTO_DST_PORT)?
        .ok_or(ConntrackError::Malformed("no destination port"))?
        .try_into()
        .map_err(|_| ConntrackError::Malformed("port not 2 bytes"))?;
    Ok(SocketAddr::new(addr, u16::from_be_bytes(port)))
}

/// The payload of the first attribute of type `kind` in `attrs`.
fn find(mut attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, ConntrackError> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return Err(ConntrackError::Malformed("attribute length out of bounds"));
        }
        if this == kind {
            return Ok(Some(&attrs[4..len]));
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(None)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests;
