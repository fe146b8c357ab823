//! Parsing the stdin commands of the line protocol (listed in the binary's `HELP`) into the
//! agent's [`Request`]s.

use std::path::{Path, PathBuf};

use nodetunnel_zds::agent::{Pod, Request};
use nodetunnel_zds::WorkloadInfo;

/// The commands, for usage messages.
pub const USAGE: &str =
    "add <uid> <netns> [<namespace>/<name>/<service-account>] | del <uid> | list | serve";

/// The command that opens the socket to tunnels under `--hold`. The tool handles it itself:
/// it is not a request to the agent.
pub const SERVE: &str = "serve";
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
fn netns_path(arg: &str) -> Result<PathBuf, UsageError> {
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

#[cfg(test)]
#[path = "commands/tests.rs"]
mod tests;
