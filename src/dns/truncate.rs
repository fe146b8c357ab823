//! Fitting a UDP reply into the size the client can take (RFC 1035 §4.2.1, RFC 6891 §6.2.5).
//!
//! A reply too large keeps as many answers as fit, drops the authority and additional
//! sections, and sets TC, so the client retries over TCP, which gets the whole reply.

use hickory_proto::op::Message;
use hickory_proto::ProtoError;

/// The classic limit of a DNS message over UDP without EDNS.
pub(crate) const CLASSIC_UDP_SIZE: usize = 512;

/// The largest UDP reply `request`'s sender accepts: its EDNS payload size (never below 512,
/// as RFC 6891 says), or 512 without EDNS.
pub(crate) fn client_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(CLASSIC_UDP_SIZE, |edns| {
        usize::from(edns.max_payload()).max(CLASSIC_UDP_SIZE)
    })
}

/// `reply` encoded in at most `limit` bytes: whole when it fits, else truncated with TC set.
/// The answer count is found by bisection, so a large record set costs a few encodings, not
/// one per record.
pub(crate) fn encode_within(mut reply: Message, limit: usize) -> Result<Vec<u8>, ProtoError> {
    let whole = reply.to_vec()?;
    if whole.len() <= limit {
        return Ok(whole);
    }
    reply.metadata.truncation = true;
    reply.authorities.clear();
    reply.additionals.clear();
    let all = reply.to_vec()?;
    if all.len() <= limit {
        return Ok(all);
    }
    let answers = std::mem::take(&mut reply.answers);
    // Invariant: `lo` answers fit (0 always does: a header, one question of at most 255
    // bytes and an OPT record stay under 512); `hi` answers do not.
    let (mut lo, mut hi) = (0, answers.len());
    let mut best = None;
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        reply.answers = answers[..mid].to_vec();
        let bytes = reply.to_vec()?;
        if bytes.len() <= limit {
            lo = mid;
            best = Some(bytes);
        } else {
            hi = mid;
        }
    }
    match best {
        Some(bytes) if lo > 0 => Ok(bytes),
        _ => {
            reply.answers.clear();
            reply.to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn reply_with(n: u8) -> Message {
        let name = Name::from_ascii("big.example.").unwrap();
        let mut reply = Message::response(7, OpCode::Query);
        reply.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..n {
            reply.add_answer(Record::from_rdata(
                name.clone(),
                30,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        reply
    }

    #[test]
    fn a_reply_that_fits_is_unchanged() {
        let reply = reply_with(3);
        let bytes = encode_within(reply.clone(), 512).unwrap();
        assert_eq!(bytes, reply.to_vec().unwrap());
        assert!(!Message::from_vec(&bytes).unwrap().metadata.truncation);
    }

    #[test]
    fn a_large_reply_keeps_what_fits_and_sets_tc() {
        // Each A answer is 16 bytes (compressed name): 100 of them exceed 512.
        let bytes = encode_within(reply_with(100), 512).unwrap();
        assert!(bytes.len() <= 512, "{}", bytes.len());
        let parsed = Message::from_vec(&bytes).unwrap();
        assert!(parsed.metadata.truncation);
        assert!(!parsed.answers.is_empty() && parsed.answers.len() < 100);
        // One more answer would not have fit.
        let mut more = parsed.clone();
        more.answers = reply_with(100).answers[..parsed.answers.len() + 1].to_vec();
        assert!(more.to_vec().unwrap().len() > 512);
        // The same reply fits a 4096-byte EDNS client whole.
        let whole = encode_within(reply_with(100), 4096).unwrap();
        assert_eq!(Message::from_vec(&whole).unwrap().answers.len(), 100);
    }

    #[test]
    fn the_limit_is_the_edns_size_but_never_below_512() {
        let mut request = Message::query();
        assert_eq!(client_limit(&request), 512);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns.clone());
        assert_eq!(client_limit(&request), 1232);
        edns.set_max_payload(100);
        request.set_edns(edns);
        assert_eq!(client_limit(&request), 512);
    }
}
