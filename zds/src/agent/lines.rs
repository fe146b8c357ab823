//! The one-line texts of [`AgentEvent`]s: the CNI agent logs them, and the
//! `nodetunnel-zds-agent` test tool (`tests/testbed`) prints them as its output, where scripts
//! and the testbed read them. That tool's `--help` lists every line; keep them stable.

use super::{AgentEvent, Listing, RequestOutcome, SnapshotProblem};

/// The lines for one event, in order.
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
