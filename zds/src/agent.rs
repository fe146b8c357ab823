//! A small ZDS node agent for tests, demos and benches: it holds a set of enrolled pods and
//! serves tunnels the way Istio's CNI agent does, without Kubernetes.
//!
//! - Each tunnel that connects gets the snapshot: an `AddWorkload` per pod (in uid order) with a
//!   freshly opened descriptor of its netns path (a `KeepWorkload` when the path no longer
//!   opens), then `SnapshotSent`, waiting for each ack. It then gets every later add and del.
//! - The newest connection wins. An older one is retired: kept open and sent only dels (so a
//!   tunnel being replaced stops serving pods that are gone), until its tunnel closes it
//!   (closing it ourselves would make that tunnel reconnect and take over); at most
//!   [`MAX_RETIRED`] are kept.
//! - Only root and the agent's own user may connect (the socket file is owner-only and each
//!   peer's `SO_PEERCRED` is checked); hellos are awaited concurrently, at most
//!   [`MAX_PENDING_HELLOS`] at once.
//! - A tunnel that fails (send or receive error, bad or unexpected message, no ack within the
//!   timeout, closed) is dropped. Pods added meanwhile are recorded and go out in the next
//!   snapshot; pods deleted meanwhile are left out of it, so the tunnel drains them.
//! - Netns descriptors are opened only to check a path on `add` and while a request is sent, and
//!   closed right after.
//!
//! [`ZdsAgent`] is the handle. The agent itself is one task that does one thing at a time, so
//! its [`AgentEvent`] stream is an ordered log; a caller's future being dropped never leaves a
//! request half sent.
//!
//! # Event lines
//!
//! [`lines::render`] turns each event into one-line texts: the CNI agent logs them, and the
//! `nodetunnel-zds-agent` test tool (in `tests/testbed`, which drives this agent from stdin)
//! prints them; that tool's `--help` documents its commands and every line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::server::{Ack, ZdsPeer, ZdsServer, ZdsServerError};
use crate::WorkloadInfo;

pub mod lines;

/// Pause after a failed `accept` (say, out of descriptors) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Connections waiting for their hello at once. Each has at most the ack timeout to say it;
/// beyond this many, new connections are closed at once, so silent clients can neither hold
/// up the next tunnel nor pile up descriptors.
pub const MAX_PENDING_HELLOS: usize = 8;

/// Retired connections kept open at once. More than one or two means tunnels keep
/// reconnecting; past the cap the oldest is closed (its tunnel, if alive, reconnects and is
/// served as the newest).
pub const MAX_RETIRED: usize = 4;

/// An enrolled pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub netns: NetnsSource,
    pub info: Option<WorkloadInfo>,
}

/// Where the descriptor of a pod's network namespace comes from when it is sent.
#[derive(Debug, Clone)]
pub enum NetnsSource {
    /// Opened afresh for each send and closed right after (tools name `ip netns` paths).
    Path(PathBuf),
    /// A descriptor the caller holds open; each send passes a duplicate. The CNI agent keeps
    /// every enrolled pod's netns open this way, so a `/proc/<pid>/ns/net` path that goes away
    /// (or whose pid is reused) can never make it send another namespace.
    Held {
        fd: Arc<OwnedFd>,
        /// How the namespace was found, for messages.
        described_as: PathBuf,
    },
}

impl NetnsSource {
    /// The path to show in messages.
    pub(crate) fn display(&self) -> std::path::Display<'_> {
        match self {
            NetnsSource::Path(path) => path.display(),
            NetnsSource::Held { described_as, .. } => described_as.display(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            NetnsSource::Path(path) => path,
            NetnsSource::Held { described_as, .. } => described_as,
        }
    }

    /// A descriptor to send, owned by the caller (closed when dropped).
    fn open(&self) -> io::Result<OwnedFd> {
        match self {
            NetnsSource::Path(path) => open_netns(path).map(OwnedFd::from),
            NetnsSource::Held { fd, .. } => fd.try_clone(),
        }
    }
}

impl PartialEq for NetnsSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NetnsSource::Path(a), NetnsSource::Path(b)) => a == b,
            (NetnsSource::Held { fd: a, .. }, NetnsSource::Held { fd: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for NetnsSource {}

impl From<PathBuf> for NetnsSource {
    fn from(path: PathBuf) -> Self {
        NetnsSource::Path(path)
    }
}

impl From<&Path> for NetnsSource {
    fn from(path: &Path) -> Self {
        NetnsSource::Path(path.to_owned())
    }
}

impl From<&PathBuf> for NetnsSource {
    fn from(path: &PathBuf) -> Self {
        NetnsSource::Path(path.clone())
    }
}

impl From<&str> for NetnsSource {
    fn from(path: &str) -> Self {
        NetnsSource::Path(path.into())
    }
}

/// What happened to an add or a del: the tunnel's answer, or why there was none.
#[derive(Debug)]
pub enum RequestOutcome {
    /// The tunnel answered (with success or an error).
    Acked(Ack),
    /// No tunnel is connected; the next snapshot reflects the change.
    NoTunnel,
    /// The tunnel failed on this request and was dropped; the next snapshot reflects it.
    TunnelLost(ZdsServerError),
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("pod {uid}: cannot open netns {}: {source}", path.display())]
    OpenNetns {
        uid: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent task has stopped")]
    Stopped,
}

/// The pods, by uid, and whether a tunnel is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub pods: Vec<Pod>,
    pub tunnel_connected: bool,
}

/// Which pods the current tunnel serves: those whose last add it acked without an error
/// (in its snapshot or after). The CNI agent's reconcile compares this with its enrolled pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    pub tunnel_connected: bool,
    pub acked: BTreeSet<String>,
}

/// A command whose result goes to the event stream (see [`ZdsAgent::submit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Add(Pod),
    Del { uid: String },
    List,
}

/// Something that went wrong for one pod during a snapshot; the snapshot goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotProblem {
    /// The netns path did not open, so the pod was sent as `KeepWorkload`.
    NoNetns { uid: String, error: String },
    /// An error ack; `request` is `add <uid>`, `keep <uid>` or `snapshot-sent`.
    ErrorAck { request: String, error: String },
}

impl SnapshotProblem {
    /// Whether this problem leaves pod `uid` unserved (a `snapshot-sent` error concerns none).
    fn concerns(&self, uid: &str) -> bool {
        match self {
            SnapshotProblem::NoNetns { uid: u, .. } => u == uid,
            SnapshotProblem::ErrorAck { request, .. } => {
                request.split_once(' ').is_some_and(|(_, u)| u == uid)
            }
        }
    }
}

/// The agent's log, in order.
#[derive(Debug)]
pub enum AgentEvent {
    /// A newer connection took over; the older one is retired.
    Replaced,
    /// A tunnel said hello; its snapshot is being sent.
    Connected,
    /// The snapshot was sent and every request in it acked.
    SnapshotSent {
        pods: usize,
        problems: Vec<SnapshotProblem>,
    },
    /// The current connection was dropped.
    Disconnected { reason: String },
    /// Result of a submitted add.
    Added {
        uid: String,
        result: Result<RequestOutcome, AgentError>,
    },
    /// Result of a submitted del.
    Deleted {
        uid: String,
        outcome: RequestOutcome,
    },
    /// Result of a submitted list.
    Listed(Listing),
}

/// Handle to a running agent. Dropping it stops the agent (after the queued commands) without
/// removing the socket file; [`ZdsAgent::shutdown`] also removes it.
#[derive(Debug)]
pub struct ZdsAgent {
    commands: mpsc::UnboundedSender<Command>,
    actor: JoinHandle<()>,
    acceptor: JoinHandle<()>,
    path: PathBuf,
    /// (st_dev, st_ino) of the socket file we bound, so shutdown removes only ours.
    socket_id: Option<(u64, u64)>,
}

impl ZdsAgent {
    /// Starts serving tunnels on `server`, waiting up to `ack_timeout` for each ack (Istio's
    /// agent: [`crate::server::ACK_TIMEOUT`]). Must be called within a Tokio runtime.
    pub fn start(
        server: ZdsServer,
        ack_timeout: Duration,
    ) -> (ZdsAgent, mpsc::UnboundedReceiver<AgentEvent>) {
        Self::start_when(server, ack_timeout, std::future::ready(()))
    }

    /// Like [`start`](Self::start), but tunnels are accepted only once `gate` completes; adds
    /// and dels before that are recorded. A node agent that has just started passes "the
    /// enrolled pods are known": a tunnel that connected earlier would get an empty
    /// snapshot and drain every pod it serves. (A tunnel that connects meanwhile waits in
    /// the socket's backlog.)
    pub fn start_when(
        server: ZdsServer,
        ack_timeout: Duration,
        gate: impl Future<Output = ()> + Send + 'static,
    ) -> (ZdsAgent, mpsc::UnboundedReceiver<AgentEvent>) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::unbounded_channel();
        let path = server.path().to_owned();
        let socket_id = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let actor = Actor {
            pods: BTreeMap::new(),
            tunnel: None,
            acked: BTreeSet::new(),
            retired: Vec::new(),
            events,
            ack_timeout,
        };
        let agent = ZdsAgent {
            commands,
            actor: tokio::spawn(actor.run(commands_rx, incoming_rx)),
            acceptor: tokio::spawn(accept_loop(server, incoming, gate)),
            path,
            socket_id,
        };
        (agent, events_rx)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the pod and, if a tunnel is connected, sends it an Add with the netns. A netns
    /// path that does not open is an error and records nothing.
    pub async fn add(
        &self,
        uid: impl Into<String>,
        netns: impl Into<NetnsSource>,
        info: Option<WorkloadInfo>,
    ) -> Result<RequestOutcome, AgentError> {
        let pod = Pod {
            uid: uid.into(),
            netns: netns.into(),
            info,
        };
        let (tx, rx) = oneshot::channel();
        self.send(Command::Add(pod, ReplyTo::Caller(tx)));
        rx.await.map_err(|_| AgentError::Stopped)?
    }

    /// Forgets the pod and, if a tunnel is connected, sends it a Del.
    pub async fn del(&self, uid: impl Into<String>) -> Result<RequestOutcome, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Del(uid.into(), ReplyTo::Caller(tx)));
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// What the current tunnel serves (see [`Serving`]).
    pub async fn serving(&self) -> Result<Serving, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Serving(tx));
        rx.await.map_err(|_| AgentError::Stopped)
    }

    #[cfg(test)]
    pub(crate) async fn list(&self) -> Result<Listing, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::List(ReplyTo::Caller(tx)));
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Queues a command whose result arrives as an [`AgentEvent`] (`Added`, `Deleted`,
    /// `Listed`), in order with the tunnel events.
    pub fn submit(&self, request: Request) {
        self.send(match request {
            Request::Add(pod) => Command::Add(pod, ReplyTo::Events),
            Request::Del { uid } => Command::Del(uid, ReplyTo::Events),
            Request::List => Command::List(ReplyTo::Events),
        });
    }

    fn send(&self, command: Command) {
        // If the actor is gone, the dropped reply sender reports it as `Stopped`.
        let _ = self.commands.send(command);
    }

    /// Finishes the queued commands, closes the connections and the listening socket, and
    /// removes the socket file (unless another agent has bound the path since).
    pub async fn shutdown(self) {
        let ZdsAgent {
            commands,
            actor,
            acceptor,
            path,
            socket_id,
        } = self;
        drop(commands);
        if let Err(error) = actor.await {
            tracing::error!(%error, "zds agent task failed");
        }
        // The acceptor stops once the actor has dropped its end of the channel.
        let _ = acceptor.await;
        let current = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == socket_id {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "cannot remove the socket file");
            }
        }
    }
}

enum Command {
    Add(Pod, ReplyTo<Result<RequestOutcome, AgentError>>),
    Del(String, ReplyTo<RequestOutcome>),
    List(ReplyTo<Listing>),
    Serving(oneshot::Sender<Serving>),
}

/// Where a command's result goes: back to an awaiting caller, or into the event stream.
enum ReplyTo<T> {
    Caller(oneshot::Sender<T>),
    Events,
}

impl<T> ReplyTo<T> {
    fn send(
        self,
        value: T,
        events: &mpsc::UnboundedSender<AgentEvent>,
        event: impl FnOnce(T) -> AgentEvent,
    ) {
        // Either receiver may be gone (a caller that gave up, an unwatched stream): fine.
        let _ = match self {
            ReplyTo::Caller(tx) => tx.send(value).map_err(drop),
            ReplyTo::Events => events.send(event(value)).map_err(drop),
        };
    }
}

/// The agent: owns the pods and the connections, does one thing at a time.
struct Actor {
    pods: BTreeMap<String, Pod>,
    tunnel: Option<ZdsPeer>,
    /// Pods the current tunnel acked (without an error) since it connected.
    acked: BTreeSet<String>,
    /// Older connections (a tunnel being replaced during an upgrade): they get every del, so
    /// the old tunnel stops serving a pod that is gone, but no adds. Dropped when their
    /// tunnel closes them. One that fails a del is muted (`true`): sent nothing more, since a
    /// late ack would be taken for the next request's, but kept open, since closing it would
    /// make that tunnel reconnect and take over from the newer one.
    retired: Vec<(ZdsPeer, bool)>,
    events: mpsc::UnboundedSender<AgentEvent>,
    ack_timeout: Duration,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut incoming: mpsc::UnboundedReceiver<ZdsPeer>,
    ) {
        loop {
            // Every branch is cancel safe: a channel receive, or waiting for a datagram.
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(peer) = incoming.recv() => self.connected(peer).await,
                reason = gone(&mut self.tunnel) => self.disconnected(reason),
                (index, reason) = first_closed(&mut self.retired), if !self.retired.is_empty() => {
                    self.retired.swap_remove(index);
                    tracing::info!(%reason, "retired tunnel connection closed");
                }
            }
        }
        tracing::debug!("zds agent stopped");
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Add(pod, reply) => {
                let uid = pod.uid.clone();
                let result = self.add(pod).await;
                reply.send(result, &self.events, |result| AgentEvent::Added {
                    uid,
                    result,
                });
            }
            Command::Del(uid, reply) => {
                let outcome = self.del(&uid).await;
                reply.send(outcome, &self.events, |outcome| AgentEvent::Deleted {
                    uid,
                    outcome,
                });
            }
            Command::List(reply) => {
                let listing = Listing {
                    pods: self.pods.values().cloned().collect(),
                    tunnel_connected: self.tunnel.is_some(),
                };
                reply.send(listing, &self.events, AgentEvent::Listed);
            }
            Command::Serving(reply) => {
                let _ = reply.send(Serving {
                    tunnel_connected: self.tunnel.is_some(),
                    acked: self.acked.clone(),
                });
            }
        }
    }

    async fn add(&mut self, pod: Pod) -> Result<RequestOutcome, AgentError> {
        let netns = pod.netns.open().map_err(|source| AgentError::OpenNetns {
            uid: pod.uid.clone(),
            path: pod.netns.path().to_owned(),
            source,
        })?;
        let uid = pod.uid.clone();
        self.pods.insert(uid.clone(), pod);
        let pod = &self.pods[&uid];
        let Some(peer) = self.tunnel.as_mut() else {
            return Ok(RequestOutcome::NoTunnel);
        };
        let sent = peer.add(&pod.uid, pod.info.as_ref(), netns.as_fd()).await;
        drop(netns);
        match &sent {
            Ok(ack) if ack.error.is_none() => self.acked.insert(uid),
            _ => self.acked.remove(&uid),
        };
        Ok(self.outcome_of(sent))
    }

    async fn del(&mut self, uid: &str) -> RequestOutcome {
        self.pods.remove(uid);
        self.acked.remove(uid);
        for (peer, muted) in self.retired.iter_mut().filter(|(_, muted)| !*muted) {
            match peer.del(uid).await {
                Ok(ack) => {
                    if let Some(error) = ack.error {
                        tracing::warn!(%uid, %error, "a retired tunnel answered a del with an error");
                    }
                }
                Err(error) => {
                    tracing::info!(%uid, %error, "a retired tunnel failed a del; sending it nothing more");
                    *muted = true;
                }
            }
        }
        match self.tunnel.as_mut() {
            None => RequestOutcome::NoTunnel,
            Some(peer) => {
                let sent = peer.del(uid).await;
                self.outcome_of(sent)
            }
        }
    }

    fn outcome_of(&mut self, sent: Result<Ack, ZdsServerError>) -> RequestOutcome {
        match sent {
            Ok(ack) => RequestOutcome::Acked(ack),
            Err(error) => {
                // After a failure (a timeout included) a late ack would be taken for the
                // next request's: the connection is done.
                self.disconnected(error.to_string());
                RequestOutcome::TunnelLost(error)
            }
        }
    }

    async fn connected(&mut self, mut peer: ZdsPeer) {
        peer.set_ack_timeout(self.ack_timeout);
        if let Some(old) = self.tunnel.take() {
            tracing::info!("a newer tunnel connected; retiring the older connection");
            self.retire(old);
            self.emit(AgentEvent::Replaced);
        }
        tracing::info!(
            pods = self.pods.len(),
            "tunnel connected, sending the snapshot"
        );
        self.emit(AgentEvent::Connected);
        self.acked.clear();
        match send_snapshot(&self.pods, &mut peer).await {
            Ok(problems) => {
                self.tunnel = Some(peer);
                self.acked = self
                    .pods
                    .keys()
                    .filter(|uid| !problems.iter().any(|p| p.concerns(uid)))
                    .cloned()
                    .collect();
                let pods = self.pods.len();
                tracing::info!(pods, problems = problems.len(), "snapshot sent");
                self.emit(AgentEvent::SnapshotSent { pods, problems });
            }
            Err(error) => self.disconnected(error.to_string()),
        }
    }

    fn disconnected(&mut self, reason: String) {
        self.tunnel = None;
        self.acked.clear();
        tracing::warn!(%reason, "tunnel disconnected; waiting for the next connection");
        self.emit(AgentEvent::Disconnected { reason });
    }

    fn retire(&mut self, peer: ZdsPeer) {
        if self.retired.len() >= MAX_RETIRED {
            drop(self.retired.remove(0));
            tracing::warn!(
                kept = MAX_RETIRED,
                "too many retired tunnel connections; closed the oldest"
            );
        }
        self.retired.push((peer, false));
    }

    fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }
}

/// Sends every pod, then `SnapshotSent`. Error acks are collected; a failed connection ends it.
async fn send_snapshot(
    pods: &BTreeMap<String, Pod>,
    peer: &mut ZdsPeer,
) -> Result<Vec<SnapshotProblem>, ZdsServerError> {
    let mut problems = Vec::new();
    for pod in pods.values() {
        let uid = &pod.uid;
        let (request, ack) = match pod.netns.open() {
            Ok(netns) => {
                let ack = peer.add(uid, pod.info.as_ref(), netns.as_fd()).await?;
                (format!("add {uid}"), ack)
            }
            Err(error) => {
                let error = format!("cannot open netns {}: {error}", pod.netns.display());
                tracing::warn!(%uid, %error, "sending the pod without its netns (keep)");
                problems.push(SnapshotProblem::NoNetns {
                    uid: uid.clone(),
                    error,
                });
                (format!("keep {uid}"), peer.keep(uid).await?)
            }
        };
        if let Some(error) = ack.error {
            problems.push(SnapshotProblem::ErrorAck { request, error });
        }
    }
    if let Some(error) = peer.snapshot_sent().await?.error {
        let request = "snapshot-sent".to_owned();
        problems.push(SnapshotProblem::ErrorAck { request, error });
    }
    Ok(problems)
}

/// Resolves when the current connection fails; never while there is none.
async fn gone(tunnel: &mut Option<ZdsPeer>) -> String {
    match tunnel {
        Some(peer) => watch(peer).await,
        None => std::future::pending().await,
    }
}

/// Waits on an idle connection until it closes or breaks; the tunnel sends nothing unasked.
async fn watch(peer: &mut ZdsPeer) -> String {
    loop {
        match peer.recv_ack().await {
            // Nothing arrived, so nothing was consumed: keep waiting.
            Err(ZdsServerError::Timeout { .. }) => continue,
            Err(error) => return error.to_string(),
            Ok(ack) => return format!("unexpected message from the tunnel: {ack:?}"),
        }
    }
}

/// Resolves when one of `peers` (not empty) closes or misbehaves: its index and why.
async fn first_closed(peers: &mut [(ZdsPeer, bool)]) -> (usize, String) {
    let watches = peers
        .iter_mut()
        .enumerate()
        .map(|(i, (peer, _))| Box::pin(async move { (i, watch(peer).await) }));
    futures_util::future::select_all(watches).await.0
}

/// Accepts tunnels and hands each one (after its hello) to the actor, until the actor stops.
async fn accept_loop(
    server: ZdsServer,
    incoming: mpsc::UnboundedSender<ZdsPeer>,
    gate: impl Future<Output = ()>,
) {
    tokio::select! {
        () = incoming.closed() => return,
        () = gate => {}
    }
    // Hellos are awaited beside the accept, not in turn, so a silent client cannot hold up
    // the tunnel connecting after it.
    let mut hellos = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = incoming.closed() => return,
            Some(said) = hellos.join_next(), if !hellos.is_empty() => match said {
                Ok(Ok(peer)) => {
                    if incoming.send(peer).is_err() {
                        return;
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "rejected a tunnel connection"),
                Err(error) => tracing::warn!(%error, "a hello task failed"),
            },
            accepted = server.accept_connection() => match accepted {
                Ok(peer) if hellos.len() >= MAX_PENDING_HELLOS => {
                    drop(peer);
                    tracing::warn!(
                        waiting = MAX_PENDING_HELLOS,
                        "closed a tunnel connection: too many connections have not said hello yet"
                    );
                }
                Ok(peer) => {
                    hellos.spawn(peer.read_hello());
                }
                Err(ZdsServerError::Accept(error)) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
                Err(error) => tracing::warn!(%error, "rejected a tunnel connection"),
            },
        }
    }
}

/// Opens a netns file for sending. Non-blocking, so a FIFO given by mistake cannot hang the
/// agent; close-on-exec like every std `File`.
fn open_netns(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(test)]
mod tests;
