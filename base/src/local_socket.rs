//! Unix sockets that only this node's trusted processes may use.
//!
//! The node agent's two sockets carry authority: ZDS hands a tunnel every pod's network
//! namespace, and the plugin-event socket enrolls pods. Both live in host directories that
//! other containers can mount, so neither the directory nor a default `0755`/umask-dependent
//! socket mode is a boundary. Two checks close it:
//!
//! - the socket file is made owner-only (`0600`) **before** `listen`, so there is no moment in
//!   which it accepts connections with a looser mode (a connect to a bound socket that is not
//!   listening yet is refused);
//! - every accepted connection's peer credentials (`SO_PEERCRED`, filled in by the kernel at
//!   `connect`, not claimable by the peer) must be root or this process's own user.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::socket::{
    bind, getsockopt, listen, socket, sockopt::PeerCredentials, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};
use nix::unistd::{geteuid, Uid};
use tokio::net::{UnixListener, UnixStream};

use crate::accept::Listener;

/// The socket file mode: read and write (connect) for the owner only.
pub const OWNER_ONLY: u32 = 0o600;

/// Sets the socket file at `path` to [`OWNER_ONLY`]. Call it between `bind` and `listen`.
pub fn restrict_to_owner(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(OWNER_ONLY))
}

/// Who connected, as the kernel recorded it at `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A peer the policy refused, or whose credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerRejected {
    #[error("cannot read the peer's credentials (SO_PEERCRED): {0}")]
    Unreadable(#[source] io::Error),
    #[error("peer pid {pid} runs as uid {uid}; only root and uid {allowed} may use this socket")]
    NotAllowed { pid: i32, uid: u32, allowed: u32 },
}

/// Root, and the user this process runs as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    allowed: Uid,
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerPolicy(root or uid {})", self.allowed)
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::this_user()
    }
}

impl PeerPolicy {
    /// Root or the effective uid of this process.
    pub fn this_user() -> PeerPolicy {
        PeerPolicy { allowed: geteuid() }
    }

    /// Root or `uid`.
    pub fn root_or(uid: u32) -> PeerPolicy {
        PeerPolicy {
            allowed: Uid::from_raw(uid),
        }
    }

    /// Whether a peer running as `uid` may use the socket.
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.allowed.as_raw()
    }

    /// Reads `socket`'s peer credentials and checks them.
    pub fn check(&self, socket: &impl AsFd) -> Result<PeerCred, PeerRejected> {
        let cred = getsockopt(socket, PeerCredentials)
            .map_err(|e| PeerRejected::Unreadable(io::Error::from(e)))?;
        let peer = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        if self.allows(peer.uid) {
            Ok(peer)
        } else {
            Err(PeerRejected::NotAllowed {
                pid: peer.pid,
                uid: peer.uid,
                allowed: self.allowed.as_raw(),
            })
        }
    }
}

/// A stream listener on `path` (a stale socket file is replaced) that is owner-only before it
/// listens, and whose accepted connections are handed on only when `peers` allows them.
pub fn listen_owner_only(path: &Path, peers: PeerPolicy) -> io::Result<CheckedListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    restrict_to_owner(path)?;
    listen(&fd, Backlog::new(128).map_err(io::Error::from)?)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))?;
    Ok(CheckedListener { listener, peers })
}

/// A Unix listener that drops, with a log line, every connection its policy refuses.
#[derive(Debug)]
pub struct CheckedListener {
    listener: UnixListener,
    peers: PeerPolicy,
}

impl Listener for CheckedListener {
    type Stream = UnixStream;
    type Peer = PeerCred;
    async fn accept_next(&self) -> io::Result<(UnixStream, PeerCred)> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            match self.peers.check(&stream) {
                Ok(peer) => return Ok((stream, peer)),
                Err(refused) => tracing::warn!(%refused, "refused a local connection"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
