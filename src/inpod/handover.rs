//! Handing a pod's listeners from an old tunnel to its replacement without resetting a
//! connection.
//!
//! During an upgrade both tunnels listen on the pod's ports at once (SO_REUSEPORT,
//! `INPOD_PORT_REUSE`), and the kernel spreads new connections between their listeners. When
//! the old tunnel closes its listeners, the connections already in their accept queues (and
//! the handshakes in flight towards them) would be reset — a few dropped connections on every
//! upgrade under load. With `net.ipv4.tcp_migrate_req=1` (Linux 5.14+) the kernel moves them to
//! another listener of the same reuseport group instead: the new tunnel's. The setting is per
//! network namespace, so the tunnel turns it on inside each pod's namespace, where its
//! listeners are, when it starts serving the pod. It changes nothing while a listener is
//! open and only adds the migration when one closes with a sibling left, so it is safe for the
//! pod's own listeners too.
//!
//! Where `/proc/sys` is read-only (a tunnel container without the rights), nodetunnel's CNI
//! agent has already set it when it enrolled the pod, and the tunnel only reads the 1 there;
//! with neither (another agent, an old kernel) an upgrade still works, with that small reset
//! window, and the tunnel warns once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// The sysctl, as seen from a thread inside the pod's namespace (`/proc/sys/net` shows the
/// namespace of the task that opens it).
const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Turns on listener migration in the calling thread's network namespace (run it inside the
/// pod's). Idempotent; only writes when the value is not already 1.
pub fn enable_in_current_netns() -> io::Result<()> {
    if std::fs::read_to_string(TCP_MIGRATE_REQ)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(TCP_MIGRATE_REQ, "1")
}

/// Logs a failure to turn migration on: once as a warning (it is a property of the node or
/// of the tunnel's rights, the same for every pod), then at debug level.
pub fn report_failure(uid: &str, error: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(%uid, %error, "cannot set {TCP_MIGRATE_REQ} in the pod");
    } else {
        tracing::warn!(%uid, %error, "cannot set {TCP_MIGRATE_REQ} in the pod: during an upgrade, connections queued on this tunnel's listeners when it closes them are reset instead of moving to the new tunnel");
    }
}
