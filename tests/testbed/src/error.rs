//! The harness's error type: every variant says what was being done, so a failing test reads
//! like a sentence ("ip -n ntt12-1-n1 addr add ... failed: exit 2: RTNETLINK answers: ...").

use std::fmt;
use std::io;

/// Result alias used throughout the test bed.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while building or driving a test bed.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed; `what` names it (file, socket, spawn).
    Io { what: String, source: io::Error },
    /// An external command (`ip`, `iptables`, `ss`, the daemon's `generate-ca`) failed.
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A tunnel did not become ready (or exited) before its deadline.
    TunnelNotReady {
        netns: String,
        reason: String,
        log_tail: String,
    },
    /// The CNI agent's in-pod rule code (called in-process) failed in namespace `netns`
    /// (boxed: the agent's error is large, and every testbed `Result` carries this type).
    InpodRules {
        netns: String,
        source: Box<nodetunnel_cni::node::inpod_rules::RulesError>,
    },
    /// The caller described something the test bed cannot build.
    Invalid(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Command {
                cmd,
                status,
                stderr,
            } => write!(f, "`{cmd}` failed ({status}): {}", stderr.trim()),
            Error::TunnelNotReady {
                netns,
                reason,
                log_tail,
            } => write!(
                f,
                "tunnel in netns {netns} not ready: {reason}\n--- tunnel log (tail) ---\n{log_tail}\n--- end of log ---"
            ),
            Error::InpodRules { netns, source } => {
                write!(f, "in-pod rules in netns {netns}: {source}")
            }
            Error::Invalid(msg) => write!(f, "invalid test bed: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::InpodRules { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
