//! Entry points for the fuzz targets (`fuzz/`) and the tests that replay their corpus. Not an
//! API: hidden from the docs, and each function only runs the real decoders on bytes.

use std::fs::File;
use std::os::fd::OwnedFd;

use nodetunnel_proto::istio::zds::{WorkloadResponse, ZdsHello};
use prost::Message;

use crate::client::{validate, ProtocolViolation, WorkloadEvent};
use crate::seqpacket::{control_fds, Datagram};

/// What one fuzz input decoded to (for tests to look at; the fuzzer ignores it).
#[derive(Debug)]
pub enum ZdsOutcome {
    /// The tunnel side took the datagram as this event (`Add` holds a real descriptor).
    Request(Result<WorkloadEvent, ProtocolViolation>),
    /// The agent side read the tunnel's hello, then its ack.
    AgentSide {
        hello: Result<(), String>,
        ack: Result<(), String>,
    },
}

/// One ZDS datagram as either end receives it. Layout of `data`:
///
/// - byte 0: bit 0 `MSG_TRUNC`, bit 1 `MSG_CTRUNC`, bits 2–3 how many descriptors came
///   with it (0–3), bit 4 which end reads it (0: the tunnel reads a request; 1: the agent
///   reads a hello and an ack);
/// - bytes 1–2: length `n` (little-endian) of the control buffer that follows; its
///   `SCM_RIGHTS` headers are walked as `recvmsg`'s would be (numbers only, never owned);
/// - the rest: the protobuf payload.
///
/// The descriptors handed to the tunnel side are real (`/dev/null`), so a rejected message
/// closes them on drop exactly as on the socket path.
pub fn zds_datagram(data: &[u8]) -> ZdsOutcome {
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or_default();
    let (control, payload) = match rest {
        [lo, hi, tail @ ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
            tail.split_at(n)
        }
        _ => (&[][..], rest),
    };
    let _ = control_fds(control);
    if flags & 0x10 != 0 {
        let hello = ZdsHello::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|h| crate::server::check_hello(&h).map_err(|e| e.to_string()));
        let ack = WorkloadResponse::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                crate::server::ack_of(r)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        return ZdsOutcome::AgentSide { hello, ack };
    }
    let fds: Vec<OwnedFd> = (0..(flags >> 2) & 0b11)
        .filter_map(|_| File::open("/dev/null").ok().map(OwnedFd::from))
        .collect();
    let datagram = Datagram {
        len: payload.len(),
        fds,
        truncated: flags & 0x01 != 0,
        control_truncated: flags & 0x02 != 0,
    };
    ZdsOutcome::Request(validate(payload, datagram))
}
