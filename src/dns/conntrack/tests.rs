use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A netlink message of `kind` for `seq` with `body` (as the kernel frames one).
fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn tuple(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut ip = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            put_attr(&mut ip, CTA_IP_V6_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V6_DST, &d.octets());
        }
        _ => unreachable!("test tuples share a family"),
    }
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[IPPROTO_UDP]);
    put_attr(&mut proto, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    put_attr(&mut proto, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    let mut t = Vec::new();
    put_attr(&mut t, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut t, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    t
}

/// An entry as the kernel reports it: the reply tuple and other attributes around the
/// original one, so the decoder must walk to it.
fn entry(seq: u32, orig: (SocketAddr, SocketAddr), reply: (SocketAddr, SocketAddr)) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
    put_attr(
        &mut body,
        CTA_TUPLE_REPLY | NLA_F_NESTED,
        &tuple(reply.0, reply.1),
    );
    put_attr(&mut body, 3, &0x188u32.to_be_bytes()); // CTA_STATUS
    put_attr(
        &mut body,
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        &tuple(orig.0, orig.1),
    );
    put_attr(&mut body, 7, &30u32.to_be_bytes()); // CTA_TIMEOUT
    message(CT_NEW, seq, &body)
}

#[test]
fn the_request_names_the_reply_tuple_of_a_udp_flow() {
    let m = encode_get(7, addr("127.0.0.1:15053"), addr("10.77.1.10:40000")).unwrap();
    assert_eq!(u32_at(&m, 0) as usize, m.len());
    assert_eq!(u16::from_ne_bytes([m[4], m[5]]), CT_GET);
    assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST);
    assert_eq!(u32_at(&m, 8), 7);
    assert_eq!(m[NLMSG_HEADER], libc::AF_INET as u8);
    let attrs = &m[NLMSG_HEADER + NFGENMSG..];
    assert!(find(attrs, CTA_TUPLE_ORIG).unwrap().is_none());
    let t = find(attrs, CTA_TUPLE_REPLY).unwrap().unwrap();
    assert_eq!(t, tuple(addr("127.0.0.1:15053"), addr("10.77.1.10:40000")));

    let m6 = encode_get(8, addr("[::1]:15053"), addr("[fd00::10]:40000")).unwrap();
    assert_eq!(m6[NLMSG_HEADER], libc::AF_INET6 as u8);
    assert!(matches!(
        encode_get(9, addr("[::1]:15053"), addr("10.0.0.1:1")),
        Err(ConntrackError::Families { .. })
    ));
}

#[test]
fn the_reply_gives_the_original_destination_of_either_family() {
    let (pod, ns, proxy) = (
        addr("10.77.1.10:40000"),
        addr("10.77.3.53:53"),
        addr("127.0.0.1:15053"),
    );
    let reply = entry(42, (pod, ns), (proxy, pod));
    assert_eq!(decode_reply(&reply, 42).unwrap(), ns);
    let (pod6, ns6, proxy6) = (
        addr("[fd00::10]:40000"),
        addr("[fd00::53]:53"),
        addr("[::1]:15053"),
    );
    let reply6 = entry(1, (pod6, ns6), (proxy6, pod6));
    assert_eq!(decode_reply(&reply6, 1).unwrap(), ns6);
    // Another request's answer is not taken.
    assert!(matches!(
        decode_reply(&reply, 43),
        Err(ConntrackError::Malformed(_))
    ));
}

#[test]
fn a_missing_entry_is_the_kernels_error() {
    let mut body = (-libc::ENOENT).to_ne_bytes().to_vec();
    body.extend_from_slice(&[0; 16]); // the request's header, echoed
    let reply = message(NLMSG_ERROR, 5, &body);
    assert!(matches!(
        decode_reply(&reply, 5),
        Err(ConntrackError::Kernel(libc::ENOENT))
    ));
}

#[test]
fn truncated_or_corrupted_replies_are_errors_never_panics() {
    let good = entry(
        3,
        (addr("10.0.0.2:1000"), addr("10.0.0.53:53")),
        (addr("127.0.0.1:15053"), addr("10.0.0.2:1000")),
    );
    for cut in 0..good.len() {
        let mut short = good[..cut].to_vec();
        // Keep the outer length consistent with the cut too, so the attribute walk is
        // exercised, not only the outer bound.
        if cut >= 4 {
            short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
        }
        // Only a cut in the trailing CTA_TIMEOUT (8 bytes) leaves the original tuple whole.
        if let Ok(found) = decode_reply(&short, 3) {
            assert!(
                cut >= good.len() - 8 && found == addr("10.0.0.53:53"),
                "cut at {cut}: {found}"
            );
        }
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = NLMSG_HEADER + (seed as usize) % (good.len() - NLMSG_HEADER);
        bad[at] = (seed >> 32) as u8 ^ (i as u8);
        let _ = decode_reply(&bad, 3);
    }
}
