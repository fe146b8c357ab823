//! Agent side of ZDS: listen, accept a tunnel, send requests and wait for each ack. The real
//! node agent lives elsewhere; this one serves tests and tools.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodetunnel_proto::istio::zds::{
    self as pb, workload_request::Payload, workload_response, Version, WorkloadRequest,
    WorkloadResponse, ZdsHello,
};

use crate::seqpacket::{SeqPacket, SeqPacketListener};
use crate::WorkloadInfo;
use nodetunnel_base::local_socket::{PeerPolicy, PeerRejected};
use prost::Message;

/// How long the agent waits for the hello and for each ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const RECV_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ZdsServerError {
    #[error("listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("accept: {0}")]
    Accept(#[source] io::Error),
    #[error("refused a connection: {0}")]
    Peer(#[source] PeerRejected),
    #[error("send to the tunnel: {0}")]
    Send(#[source] io::Error),
    #[error("receive from the tunnel: {0}")]
    Recv(#[source] io::Error),
    #[error("the tunnel closed the connection")]
    Closed,
    #[error("no {waiting_for} from the tunnel within {timeout:?}")]
    Timeout {
        waiting_for: &'static str,
        timeout: Duration,
    },
    #[error("bad hello: {0}")]
    BadHello(String),
    #[error("bad response: {0}")]
    BadResponse(String),
}

/// The tunnel's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// `None`: success.
    pub error: Option<String>,
}

impl Ack {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The agent's listening socket. Whoever connects is handed every pod's network namespace,
/// so the socket file is owner-only and each connection must come from root or the agent's
/// own user (`SO_PEERCRED`, [`PeerPolicy`]).
#[derive(Debug)]
pub struct ZdsServer {
    listener: SeqPacketListener,
    path: PathBuf,
    peers: PeerPolicy,
}

impl ZdsServer {
    /// Listens on `path`, replacing a stale socket file.
    pub fn bind(path: impl AsRef<Path>) -> Result<ZdsServer, ZdsServerError> {
        let path = path.as_ref().to_owned();
        match SeqPacketListener::bind(&path) {
            Ok(listener) => Ok(ZdsServer {
                listener,
                path,
                peers: PeerPolicy::this_user(),
            }),
            Err(source) => Err(ZdsServerError::Bind { path, source }),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts a tunnel and reads its hello, which must say V1.
    pub async fn accept(&self) -> Result<ZdsPeer, ZdsServerError> {
        self.accept_connection().await?.read_hello().await
    }

    /// Accepts a connection whose peer the policy allows, without waiting for its hello (see
    /// [`ZdsPeer::read_hello`]), so an accept loop can wait for hellos concurrently and one
    /// silent client cannot hold up the next.
    pub async fn accept_connection(&self) -> Result<ZdsPeer, ZdsServerError> {
        let socket = self
            .listener
            .accept()
            .await
            .map_err(ZdsServerError::Accept)?;
        self.peers.check(&socket).map_err(ZdsServerError::Peer)?;
        Ok(ZdsPeer {
            socket,
            buf: vec![0; RECV_BUFFER],
            timeout: ACK_TIMEOUT,
        })
    }
}

/// One connected tunnel.
#[derive(Debug)]
pub struct ZdsPeer {
    socket: SeqPacket,
    buf: Vec<u8>,
    timeout: Duration,
}

impl ZdsPeer {
    /// Reads the tunnel's hello (within the ack timeout), which must say V1.
    pub async fn read_hello(mut self) -> Result<ZdsPeer, ZdsServerError> {
        let hello: ZdsHello = self.recv("hello", ZdsServerError::BadHello).await?;
        check_hello(&hello)?;
        Ok(self)
    }

    /// Changes how long to wait for each ack (default [`ACK_TIMEOUT`]).
    pub(crate) fn set_ack_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Adds a pod, passing its netns as SCM_RIGHTS.
    pub async fn add(
        &mut self,
        uid: &str,
        info: Option<&WorkloadInfo>,
        netns: BorrowedFd<'_>,
    ) -> Result<Ack, ZdsServerError> {
        let add = pb::AddWorkload {
            uid: uid.to_owned(),
            workload_info: info.map(|i| pb::WorkloadInfo {
                name: i.name.clone(),
                namespace: i.namespace.clone(),
                service_account: i.service_account.clone(),
                windows_namespace: None,
            }),
        };
        self.request(Payload::Add(add), &[netns]).await
    }

    pub async fn keep(&mut self, uid: &str) -> Result<Ack, ZdsServerError> {
        let uid = uid.to_owned();
        self.request(Payload::Keep(pb::KeepWorkload { uid }), &[])
            .await
    }

    pub async fn del(&mut self, uid: &str) -> Result<Ack, ZdsServerError> {
        let uid = uid.to_owned();
        self.request(Payload::Del(pb::DelWorkload { uid }), &[])
            .await
    }

    pub async fn snapshot_sent(&mut self) -> Result<Ack, ZdsServerError> {
        self.request(Payload::SnapshotSent(pb::SnapshotSent {}), &[])
            .await
    }

    /// Sends arbitrary bytes and descriptors as one datagram (for malformed-input tests);
    /// read the answer with [`ZdsPeer::recv_ack`].
    pub async fn send_raw(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ZdsServerError> {
        self.socket
            .send(bytes, fds)
            .await
            .map_err(ZdsServerError::Send)
    }

    /// Waits for the next ack. After a timeout a late ack would be taken for the next
    /// request's, so drop the connection instead of sending more.
    pub async fn recv_ack(&mut self) -> Result<Ack, ZdsServerError> {
        let response: WorkloadResponse = self.recv("ack", ZdsServerError::BadResponse).await?;
        ack_of(response)
    }

    async fn request(
        &mut self,
        payload: Payload,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Ack, ZdsServerError> {
        let request = WorkloadRequest {
            payload: Some(payload),
        };
        self.send_raw(&request.encode_to_vec(), fds).await?;
        self.recv_ack().await
    }

    /// One message from the tunnel within the timeout; `bad` wraps what makes it invalid.
    async fn recv<M: Message + Default>(
        &mut self,
        waiting_for: &'static str,
        bad: fn(String) -> ZdsServerError,
    ) -> Result<M, ZdsServerError> {
        let timeout = self.timeout;
        let received = tokio::time::timeout(timeout, self.socket.recv(&mut self.buf)).await;
        let received = received.map_err(|_| ZdsServerError::Timeout {
            waiting_for,
            timeout,
        })?;
        let d = received
            .map_err(ZdsServerError::Recv)?
            .ok_or(ZdsServerError::Closed)?;
        if d.truncated || d.control_truncated {
            return Err(bad("truncated".into()));
        }
        if !d.fds.is_empty() {
            return Err(bad(format!("{} unexpected file descriptors", d.fds.len())));
        }
        M::decode(&self.buf[..d.len]).map_err(|e| bad(e.to_string()))
    }
}

/// The tunnel's hello must say V1.
pub(crate) fn check_hello(hello: &ZdsHello) -> Result<(), ZdsServerError> {
    match Version::try_from(hello.version) {
        Ok(Version::V1) => Ok(()),
        _ => Err(ZdsServerError::BadHello(format!(
            "version {}",
            hello.version
        ))),
    }
}

/// The ack a response carries; an empty error string is success.
pub(crate) fn ack_of(response: WorkloadResponse) -> Result<Ack, ZdsServerError> {
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => {
            Ok(Ack { error: None })
        }
        Some(workload_response::Payload::Ack(ack)) => Ok(Ack {
            error: Some(ack.error),
        }),
        None => Err(ZdsServerError::BadResponse("no ack".into())),
    }
}
