//! The `zds-agent` line protocol: parsing stdin commands and printing events. The formats are
//! listed in the [parent module](super) and are relied on by scripts: keep them stable.

use std::path::{Path, PathBuf};

use super::{AgentEvent, Listing, Pod, Request, RequestOutcome, SnapshotProblem};
use crate::WorkloadInfo;

/// The commands, for usage messages.
pub const USAGE: &str =
    "add <uid> <netns> [<namespace>/<name>/<service-account>] | del <uid> | list";
/// Where a netns given by name lives (as `ip netns add` makes them).
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{command}: expected {expected}")]
    Arguments {
        command: &'static str,
        expected: &'static str,
    },
    #[error("workload info {0:?}: expected <namespace>/<name>/<service-account>")]
    Info(String),
    #[error("netns name {0:?}: expected a path or a name under {NETNS_DIR}")]
    NetnsName(String),
}

/// One stdin line: `Ok(None)` for a blank line or a `#` comment.
pub fn parse(line: &str) -> Result<Option<Request>, UsageError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let request = match words.as_slice() {
        [] => return Ok(None),
        [first, ..] if first.starts_with('#') => return Ok(None),
        ["add", uid, netns] => add(uid, netns, None)?,
        ["add", uid, netns, info] => add(uid, netns, Some(parse_info(info)?))?,
        ["add", ..] => {
            return Err(UsageError::Arguments {
                command: "add",
                expected: "<uid> <netns> [<namespace>/<name>/<service-account>]",
            })
        }
        ["del", uid] => Request::Del {
            uid: (*uid).to_owned(),
        },
        ["del", ..] => {
            return Err(UsageError::Arguments {
                command: "del",
                expected: "<uid>",
            })
        }
        ["list"] => Request::List,
        ["list", ..] => {
            return Err(UsageError::Arguments {
                command: "list",
                expected: "no arguments",
            })
        }
        [other, ..] => return Err(UsageError::UnknownCommand((*other).to_owned())),
    };
    Ok(Some(request))
}

fn add(uid: &str, netns: &str, info: Option<WorkloadInfo>) -> Result<Request, UsageError> {
    Ok(Request::Add(Pod {
        uid: uid.to_owned(),
        netns: netns_path(netns)?.into(),
        info,
    }))
}

/// A path if it contains `/`, otherwise a name under [`NETNS_DIR`].
pub fn netns_path(arg: &str) -> Result<PathBuf, UsageError> {
    match arg {
        _ if arg.contains('/') => Ok(PathBuf::from(arg)),
        "." | ".." => Err(UsageError::NetnsName(arg.to_owned())),
        name => Ok(Path::new(NETNS_DIR).join(name)),
    }
}

fn parse_info(arg: &str) -> Result<WorkloadInfo, UsageError> {
    match arg.split('/').collect::<Vec<_>>().as_slice() {
        [namespace, name, service_account]
            if [namespace, name, service_account]
                .iter()
                .all(|s| !s.is_empty()) =>
        {
            Ok(WorkloadInfo {
                name: (*name).to_owned(),
                namespace: (*namespace).to_owned(),
                service_account: (*service_account).to_owned(),
            })
        }
        _ => Err(UsageError::Info(arg.to_owned())),
    }
}

/// The stdout lines for one event.
pub fn render(event: &AgentEvent) -> Vec<String> {
    match event {
        AgentEvent::Replaced => vec!["tunnel replaced by a newer connection".to_owned()],
        AgentEvent::Connected => vec!["tunnel connected".to_owned()],
        AgentEvent::SnapshotSent { pods, problems } => snapshot(*pods, problems),
        AgentEvent::Disconnected { reason } => {
            vec![format!("tunnel disconnected: {}", one_line(reason))]
        }
        AgentEvent::Added { uid, result } => vec![match result {
            Ok(outcome) => outcome_line("add", uid, outcome),
            Err(error) => format!("error add {uid}: {}", one_line(&error.to_string())),
        }],
        AgentEvent::Deleted { uid, outcome } => vec![outcome_line("del", uid, outcome)],
        AgentEvent::Listed(listing) => list(listing),
    }
}

fn outcome_line(op: &str, uid: &str, outcome: &RequestOutcome) -> String {
    match outcome {
        RequestOutcome::Acked(ack) => match &ack.error {
            None => format!("ack {op} {uid} ok"),
            Some(error) => format!("ack {op} {uid} error: {}", one_line(error)),
        },
        RequestOutcome::NoTunnel => format!("pending {op} {uid}: no tunnel connected"),
        RequestOutcome::TunnelLost(error) => {
            let error = one_line(&error.to_string());
            format!("pending {op} {uid}: tunnel lost: {error}")
        }
    }
}

fn snapshot(pods: usize, problems: &[SnapshotProblem]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut error_acks = 0;
    for problem in problems {
        lines.push(match problem {
            SnapshotProblem::NoNetns { uid, error } => {
                format!("snapshot keep {uid}: {}", one_line(error))
            }
            SnapshotProblem::ErrorAck { request, error } => {
                error_acks += 1;
                format!("snapshot ack {request} error: {}", one_line(error))
            }
        });
    }
    lines.push(match error_acks {
        0 => format!("snapshot sent: {pods} pods, acks ok"),
        k => format!("snapshot sent: {pods} pods, {k} error acks"),
    });
    lines
}

fn list(listing: &Listing) -> Vec<String> {
    let tunnel = match listing.tunnel_connected {
        true => "tunnel connected",
        false => "no tunnel",
    };
    let mut lines = vec![format!("list {} pods, {tunnel}", listing.pods.len())];
    for pod in &listing.pods {
        let info = match &pod.info {
            Some(i) => format!("{}/{}/{}", i.namespace, i.name, i.service_account),
            None => "-".to_owned(),
        };
        let netns = one_line(&pod.netns.display().to_string());
        lines.push(format!("pod {} {netns} {info}", pod.uid));
    }
    lines
}

/// Keeps one result on one line whatever the error text holds.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
