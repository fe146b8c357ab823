//! `net.ipv4.tcp_migrate_req=1` inside a pod's network namespace, so an in-place tunnel upgrade
//! resets no connection.
//!
//! During an upgrade the old and the new tunnel both listen on the pod's ports (SO_REUSEPORT);
//! when the old one closes its listeners, the kernel resets whatever is still queued on them
//! unless this setting (per network namespace, Linux 5.14+) tells it to move those connections
//! to another listener of the group — the new tunnel's. The tunnel sets it too, but a tunnel
//! container usually sees `/proc/sys` read-only, while the agent, privileged and already inside
//! the pod's namespace for the rules, can. Setting it only changes what happens when a
//! SO_REUSEPORT listener closes with a sibling left, so it is harmless to the pod's own
//! sockets.

use std::io;

use nodetunnel_base::netns::{NetnsError, NetnsHandle};

/// The sysctl as a thread inside the namespace sees it (`/proc/sys/net` follows the opener's
/// network namespace).
const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("entering the pod's netns {path}: {source}")]
    Netns { path: String, source: NetnsError },
    #[error("setting {TCP_MIGRATE_REQ} in the pod's netns {path}: {source}")]
    Sysctl { path: String, source: io::Error },
}

/// Turns listener migration on inside `netns`; idempotent (writes only when it is not 1).
pub fn enable(netns: &NetnsHandle) -> Result<(), HandoverError> {
    let path = || netns.path().display().to_string();
    netns
        .run(|| {
            if std::fs::read_to_string(TCP_MIGRATE_REQ)?.trim() == "1" {
                return Ok(());
            }
            std::fs::write(TCP_MIGRATE_REQ, "1")
        })
        .map_err(|source| HandoverError::Netns {
            path: path(),
            source,
        })?
        .map_err(|source| HandoverError::Sysctl {
            path: path(),
            source,
        })
}
