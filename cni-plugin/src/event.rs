//! The pod event the plugin sends the agent on `ADD` (Istio's `CNIPluginAddEvent` shape):
//! JSON POSTed to `http://unix/cmdadd` over `<cni_agent_run_dir>/pluginevent.sock`. The agent
//! answers 200 (enrolled, or nothing to do), 400 (bad event) or 500 (enrollment failed), with
//! a text body that says why. Istio's agent and plugin speak the same body, so either side
//! can be Istio's.

mod ip;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ip::{EventIp, EventIpError, IpNet, IpProblem};

/// Socket file name under the run dir.
pub(crate) const SOCKET_NAME: &str = "pluginevent.sock";
/// HTTP path of the add event.
pub(crate) const ADD_PATH: &str = "/cmdadd";
/// How long the plugin waits for the agent's answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// One `ADD` for a pod that the plugin decided is ambient. Serialized as Go serializes
/// Istio's `CNIPluginAddEvent` (fields in its order); see [`EventIp`] for the `IPs` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "IncomingEvent")]
pub struct PluginEvent {
    /// The pod sandbox's netns path as the runtime gave it (`CNI_NETNS`).
    #[serde(rename = "Netns")]
    pub netns: String,
    #[serde(rename = "PodName")]
    pub pod_name: String,
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    /// The pod's addresses from the previous plugins' result (`prevResult.ips`).
    #[serde(rename = "IPs", serialize_with = "ip::serialize_list")]
    pub ips: Vec<EventIp>,
}

impl PluginEvent {
    /// The pod's addresses, in order; IPv4-mapped IPv6 ones as IPv4 (as Istio's agent
    /// unmaps them). An entry without an IP, or whose mask does not fit it, is an error.
    pub fn addresses(&self) -> Result<Vec<IpAddr>, EventIpError> {
        self.ips
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let error = |problem| EventIpError { index, problem };
                let ip = entry
                    .address
                    .ip
                    .ok_or_else(|| error(IpProblem::NoAddress))?;
                entry.address.prefix_len().map_err(error)?;
                Ok(ip.to_canonical())
            })
            .collect()
    }
}

/// What a sender may POST. Go fills absent (or `null`) fields with zero values, and so does
/// this; the agent then refuses empty names. Istio releases before the `Netns` field nested
/// the runtime's arguments as `CmdAddEvent` (Go's `skel.CmdArgs`, whose `Netns` is the same
/// path); that is taken when `Netns` is absent.
#[derive(Deserialize)]
struct IncomingEvent {
    #[serde(rename = "Netns", default)]
    netns: Option<String>,
    #[serde(rename = "CmdAddEvent", default)]
    cmd_add_event: Option<IncomingCmdArgs>,
    #[serde(rename = "PodName", default)]
    pod_name: Option<String>,
    #[serde(rename = "PodNamespace", default)]
    pod_namespace: Option<String>,
    #[serde(rename = "IPs", default, deserialize_with = "ip::deserialize_list")]
    ips: Vec<EventIp>,
}

#[derive(Deserialize)]
struct IncomingCmdArgs {
    #[serde(rename = "Netns", default)]
    netns: Option<String>,
}

impl From<IncomingEvent> for PluginEvent {
    fn from(event: IncomingEvent) -> PluginEvent {
        let netns = match event.netns.filter(|n| !n.is_empty()) {
            Some(netns) => netns,
            None => event
                .cmd_add_event
                .and_then(|args| args.netns)
                .unwrap_or_default(),
        };
        PluginEvent {
            netns,
            pod_name: event.pod_name.unwrap_or_default(),
            pod_namespace: event.pod_namespace.unwrap_or_default(),
            ips: event.ips,
        }
    }
}

/// `<run_dir>/pluginevent.sock`.
pub(crate) fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// Why the agent did not accept an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    #[error("encoding the pod event: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("connecting to the CNI agent at {}: {source} (is the agent running?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the CNI agent at {}: {source}", path.display())]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("building the request to the CNI agent: {0}")]
    Request(#[source] http::Error),
    #[error("the CNI agent at {} answered {status}: {body}", path.display())]
    Rejected {
        path: PathBuf,
        status: http::StatusCode,
        body: String,
    },
    #[error("the CNI agent at {} did not answer within {after:?}", path.display())]
    Timeout { path: PathBuf, after: Duration },
}

impl EventError {
    /// Whether retrying later may help: the agent is absent or slow, rather than refusing.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            EventError::Connect { .. } | EventError::Http { .. } | EventError::Timeout { .. }
        )
    }
}

/// Longest agent answer body kept for the error message.
const MAX_BODY: usize = 64 * 1024;

/// POSTs `event` as JSON to `http://unix/cmdadd` over `<run_dir>/pluginevent.sock` and waits
/// for the answer; the whole exchange (connect included) is bounded by [`TIMEOUT`]. Only a
/// 200 is success: the plugin fails the pod's `ADD` otherwise (fail closed).
pub(crate) async fn send_add(run_dir: &Path, event: &PluginEvent) -> Result<(), EventError> {
    send_add_within(run_dir, event, TIMEOUT).await
}

/// [`send_add`] with another deadline (tests).
pub(crate) async fn send_add_within(
    run_dir: &Path,
    event: &PluginEvent,
    timeout: Duration,
) -> Result<(), EventError> {
    let path = socket_path(run_dir);
    let body = serde_json::to_vec(event).map_err(EventError::Encode)?;
    match tokio::time::timeout(timeout, exchange(&path, body)).await {
        Ok(result) => result,
        Err(_) => Err(EventError::Timeout {
            path,
            after: timeout,
        }),
    }
}

async fn exchange(path: &Path, body: Vec<u8>) -> Result<(), EventError> {
    use http_body_util::{BodyExt, Full, Limited};
    use hyper_util::rt::TokioIo;

    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| EventError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let http_err = |source| EventError::Http {
        path: path.to_path_buf(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    // The connection task ends when the exchange does (or with the deadline's drop).
    let conn = tokio::spawn(conn);
    let request = http::Request::post(ADD_PATH)
        .header(http::header::HOST, "unix")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(EventError::Request)?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status();
    let result = if status == http::StatusCode::OK {
        Ok(())
    } else {
        // A body that cannot be read (or is too long) still leaves the status to report.
        let text = match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
                .trim()
                .to_string(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(EventError::Rejected {
            path: path.to_path_buf(),
            status,
            body: text,
        })
    };
    conn.abort();
    result
}

#[cfg(test)]
mod tests;
