//! The external binaries the node code drives, and running them.
//!
//! `iptables-restore`/`iptables-save` rather than a netlink library because they speak both
//! backends (legacy and nf_tables) with one input format, the one Istio's agent feeds them too;
//! `ipset` likewise. A binary runs in the network namespace of the thread that spawns it, so
//! callers run these from inside [`NetnsHandle::run`](nodetunnel_base::netns::NetnsHandle::run) for a pod, or
//! from the agent's own thread for the host.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// Where the binaries are. [`Default`] finds them on `PATH`; the agent image decides which
/// iptables variant (legacy or nft) `iptables-restore` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub iptables_restore: PathBuf,
    pub iptables_save: PathBuf,
    /// The IPv6 twins, used when IPv6 rules are on (`AMBIENT_IPV6`).
    pub ip6tables_restore: PathBuf,
    pub ip6tables_save: PathBuf,
    pub ipset: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            iptables_restore: PathBuf::from("iptables-restore"),
            iptables_save: PathBuf::from("iptables-save"),
            ip6tables_restore: PathBuf::from("ip6tables-restore"),
            ip6tables_save: PathBuf::from("ip6tables-save"),
            ipset: PathBuf::from("ipset"),
        }
    }
}

/// A binary that could not run or did not succeed. `Display` reads like
/// `iptables-restore in netns /proc/123/ns/net failed (exit 2): <stderr>`.
#[derive(Debug, thiserror::Error)]
#[error("{program} in {place} {problem}")]
pub struct ToolError {
    /// The binary as configured, e.g. `iptables-restore`.
    pub program: String,
    /// Where it ran: `netns <path>` or `the agent's netns`.
    pub place: String,
    pub problem: ToolProblem,
}

/// Why a binary did not succeed.
#[derive(Debug)]
pub enum ToolProblem {
    /// It could not be started (not installed, not executable) or its stdin/stdout broke.
    Spawn(io::Error),
    /// It ran and exited unsuccessfully; its stderr, trimmed.
    Failed { status: ExitStatus, stderr: String },
}

impl fmt::Display for ToolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolProblem::Spawn(e) => write!(f, "could not run: {e}"),
            ToolProblem::Failed { status, stderr } => {
                match status.code() {
                    Some(code) => write!(f, "failed (exit {code})")?,
                    None => write!(f, "failed ({status})")?,
                }
                if stderr.is_empty() {
                    Ok(())
                } else {
                    write!(f, ": {stderr}")
                }
            }
        }
    }
}

/// Runs `program args…` in the calling thread's netns, feeding `stdin`, and returns its stdout.
/// `place` describes that netns for the error.
pub(crate) fn run(
    program: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
    place: &str,
) -> Result<String, ToolError> {
    let fail = |problem| ToolError {
        program: program.display().to_string(),
        place: place.to_string(),
        problem,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(ToolProblem::Spawn(e)))?;
    // The inputs are a few KiB, below any pipe buffer, so writing before reading stdout cannot
    // deadlock; the pipe closes when it drops. A tool that exits before reading all of its input
    // (it failed early) breaks the pipe: the child is still reaped, and its exit status and
    // stderr are what explain the failure, not the EPIPE.
    let written = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| fail(ToolProblem::Spawn(e)))?;
    if !out.status.success() {
        return Err(fail(ToolProblem::Failed {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }));
    }
    // It succeeded without taking all of its input: what it applied is not what was asked.
    written.map_err(|e| fail(ToolProblem::Spawn(e)))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `netns <path>`, for [`ToolError::place`].
pub(crate) fn in_netns(path: &std::path::Path) -> String {
    format!("netns {}", path.display())
}

#[cfg(test)]
mod tests;
