//! Tunnel side of ZDS: connect to the node agent, say hello, turn its datagrams into typed
//! [`WorkloadEvent`]s and answer each with an ack.
//!
//! A bad message is not fatal: it becomes [`WorkloadEvent::Invalid`], which the caller answers
//! with `ack(Some(reason))` before reading on. Descriptors that came with a rejected message
//! are closed when the event is dropped.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodetunnel_base::backoff::Backoff;
use nodetunnel_proto::istio::zds::{
    workload_request::Payload, workload_response, Ack, Version, WorkloadRequest, WorkloadResponse,
    ZdsHello,
};

use crate::seqpacket::{Datagram, SeqPacket};
pub use crate::WorkloadInfo;
use prost::DecodeError;
use prost::Message;

/// Receive buffer; a larger datagram is a protocol error.
pub(crate) const RECV_BUFFER: usize = 64 * 1024;
/// First reconnect delay; doubles per failure up to [`MAX_BACKOFF`] (see [`reconnect_backoff`]).
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("connect to the node agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("send to the node agent: {0}")]
    Send(#[source] io::Error),
    #[error("receive from the node agent: {0}")]
    Recv(#[source] io::Error),
}

/// One validated request from the agent. Every event, `Invalid` included, must be acked.
#[derive(Debug)]
pub enum WorkloadEvent {
    /// Start (or confirm) a pod's proxy in the network namespace `netns`.
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    },
    /// Snapshot only: keep this pod although the agent has no netns for it.
    Keep { uid: String },
    /// Stop a pod's proxy.
    Del { uid: String },
    /// End of the snapshot: pods it did not name may be drained.
    SnapshotSent,
    /// A request that breaks the protocol; ack it with this as the error.
    Invalid(ProtocolViolation),
}

/// Why a request was rejected. The `Display` text is meant for the error ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("request larger than {RECV_BUFFER} bytes")]
    Truncated,
    #[error("control data truncated (too many file descriptors?)")]
    ControlTruncated,
    #[error("malformed request: {0}")]
    Malformed(#[from] DecodeError),
    #[error("request without payload")]
    NoPayload,
    #[error("{kind} without a uid")]
    EmptyUid { kind: &'static str },
    #[error("{kind} must not carry file descriptors (got {count})")]
    UnexpectedFds { kind: &'static str, count: usize },
    #[error("add {uid}: no netns file descriptor")]
    MissingNetns { uid: String },
    #[error("add {uid}: {count} file descriptors, expected one")]
    TooManyFds { uid: String, count: usize },
}

/// Connecting to the agent.
#[derive(Debug)]
pub struct ZdsClient;

impl ZdsClient {
    /// Connects to the agent's socket and sends `ZdsHello{V1}`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<ZdsConnection, ZdsError> {
        let path = path.as_ref();
        let socket = SeqPacket::connect(path).map_err(|source| ZdsError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        socket
            .send(&hello.encode_to_vec(), &[])
            .await
            .map_err(ZdsError::Send)?;
        Ok(ZdsConnection {
            socket,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Connects, sleeping `backoff` between failed attempts (each logged), until it works.
    /// The caller resets `backoff` once a connection has proven healthy. `backoff` is
    /// normally [`reconnect_backoff`].
    pub async fn connect_retrying(path: &Path, backoff: &mut Backoff) -> ZdsConnection {
        loop {
            match ZdsClient::connect(path).await {
                Ok(conn) => return conn,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, ?delay, "node agent unreachable, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// A connection to the agent, after the hello.
#[derive(Debug)]
pub struct ZdsConnection {
    socket: SeqPacket,
    buf: Vec<u8>,
}

impl ZdsConnection {
    /// The next request; `Ok(None)` once the agent has closed the connection. Cancel safe:
    /// dropping the future before it completes loses no datagram.
    pub async fn next(&mut self) -> Result<Option<WorkloadEvent>, ZdsError> {
        let datagram = self.socket.recv(&mut self.buf).await;
        match datagram.map_err(ZdsError::Recv)? {
            None => Ok(None),
            Some(d) => Ok(Some(parse(&self.buf[..d.len], d))),
        }
    }

    /// Answers the last request: `None` for success, `Some(reason)` for an error (an empty
    /// reason would read as success on the wire, so it is replaced).
    pub async fn ack(&self, error: Option<String>) -> Result<(), ZdsError> {
        let error = match error {
            Some(e) if e.is_empty() => "unspecified error".to_owned(),
            Some(e) => e,
            None => String::new(),
        };
        let response = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack { error })),
        };
        let bytes = response.encode_to_vec();
        self.socket.send(&bytes, &[]).await.map_err(ZdsError::Send)
    }
}

/// Validates one datagram. Descriptors not handed out in `Add` are dropped (closed) here.
fn parse(bytes: &[u8], d: Datagram) -> WorkloadEvent {
    validate(bytes, d).unwrap_or_else(WorkloadEvent::Invalid)
}

pub(crate) fn validate(bytes: &[u8], d: Datagram) -> Result<WorkloadEvent, ProtocolViolation> {
    use ProtocolViolation as V;
    if d.truncated {
        return Err(V::Truncated);
    }
    if d.control_truncated {
        return Err(V::ControlTruncated);
    }
    let request = WorkloadRequest::decode(bytes)?;
    let mut fds = d.fds;
    match request.payload.ok_or(V::NoPayload)? {
        Payload::Add(add) => {
            let uid = non_empty("add", add.uid)?;
            if fds.len() > 1 {
                let count = fds.len();
                return Err(V::TooManyFds { uid, count });
            }
            let Some(netns) = fds.pop() else {
                return Err(V::MissingNetns { uid });
            };
            let info = add.workload_info.map(|i| WorkloadInfo {
                name: i.name,
                namespace: i.namespace,
                service_account: i.service_account,
            });
            Ok(WorkloadEvent::Add { uid, info, netns })
        }
        Payload::Keep(k) => {
            no_fds("keep", &fds)?;
            let uid = non_empty("keep", k.uid)?;
            Ok(WorkloadEvent::Keep { uid })
        }
        Payload::Del(d) => {
            no_fds("del", &fds)?;
            let uid = non_empty("del", d.uid)?;
            Ok(WorkloadEvent::Del { uid })
        }
        Payload::SnapshotSent(_) => {
            no_fds("snapshot-sent", &fds)?;
            Ok(WorkloadEvent::SnapshotSent)
        }
    }
}

fn non_empty(kind: &'static str, uid: String) -> Result<String, ProtocolViolation> {
    if uid.is_empty() {
        Err(ProtocolViolation::EmptyUid { kind })
    } else {
        Ok(uid)
    }
}

fn no_fds(kind: &'static str, fds: &[OwnedFd]) -> Result<(), ProtocolViolation> {
    match fds.len() {
        0 => Ok(()),
        count => Err(ProtocolViolation::UnexpectedFds { kind, count }),
    }
}

/// Reconnect delays to the node agent: 10 ms, doubling, capped at 15 s, no jitter. The
/// agent is local and serves one tunnel, so there is no crowd to spread out, and a short
/// first delay gets a restarted tunnel its pods back quickly.
pub fn reconnect_backoff() -> Backoff {
    Backoff::exact(INITIAL_BACKOFF, MAX_BACKOFF)
}

#[cfg(test)]
mod tests;
