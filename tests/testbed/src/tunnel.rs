//! A nodetunnel process running inside a namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns::Netns;
pub use crate::process::TERM_GRACE;
use crate::process::{EnvMode, NsProcess};
use crate::procstat::ProcStats;
use crate::topology::port;

mod xds;
pub use xds::{XdsTypeState, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// How long [`Tunnel::start`] waits for `/healthz/ready`.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// How a tunnel process is started, for tests that need more than an added environment
/// (Istio's chart: `proxy ztunnel` and exactly the chart's variables).
#[derive(Clone, Debug)]
pub struct TunnelLaunch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub env_mode: EnvMode,
}

/// A running tunnel. Dropping it sends SIGTERM, then SIGKILL after [`TERM_GRACE`]; if the
/// current thread is panicking, its log tail is printed to stderr (the test's output).
pub struct Tunnel {
    process: NsProcess,
}

impl Tunnel {
    /// Runs `ip netns exec <ns> <bin>` with `env` added to this process's environment, stdout
    /// and stderr appended to `log_path`, and waits until `GET /healthz/ready` on
    /// 127.0.0.1:15021 inside the namespace answers 200. Fails (with the log tail) if the
    /// process exits or [`READY_DEADLINE`] passes first.
    pub fn start(ns: &Netns, bin: &Path, env: &[(&str, &str)], log_path: &Path) -> Result<Tunnel> {
        let mut tunnel = Tunnel::spawn(ns, bin, env, log_path)?;
        tunnel.wait_ready(READY_DEADLINE)?;
        Ok(tunnel)
    }

    /// Like [`start`](Self::start) but returns as soon as the process runs, without waiting
    /// for readiness (a shared-mode tunnel is not ready before its ZDS agent sent a snapshot).
    pub fn spawn(ns: &Netns, bin: &Path, env: &[(&str, &str)], log_path: &Path) -> Result<Tunnel> {
        Ok(Tunnel {
            process: NsProcess::spawn("tunnel", ns, bin, &[], env, log_path)?,
        })
    }

    /// Like [`spawn`](Self::spawn), with the arguments and environment of `launch`.
    pub fn spawn_launch(
        ns: &Netns,
        bin: &Path,
        launch: &TunnelLaunch,
        log_path: &Path,
    ) -> Result<Tunnel> {
        let env: Vec<(&str, &str)> = launch
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Ok(Tunnel {
            process: NsProcess::spawn_with(
                "tunnel",
                ns,
                bin,
                &launch.args,
                &env,
                launch.env_mode,
                log_path,
            )?,
        })
    }

    /// Sends SIGTERM and returns at once: the tunnel drains while the test watches (see
    /// [`try_wait`](Self::try_wait)); dropping it later still reaps it.
    pub fn signal_term(&self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| Error::io("sending SIGTERM to the tunnel", std::io::Error::from(e)))
    }

    /// Polls `/healthz/ready` until it answers 200. Fails (with the log tail) if the process
    /// exits or `deadline` passes first.
    pub fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(self.not_ready(format!("process exited with {status}")));
            }
            let last = match self.readiness() {
                Ok(200) => return Ok(()),
                Ok(code) => format!("/healthz/ready answered {code}"),
                Err(e) => format!("/healthz/ready: {e}"),
            };
            if Instant::now() >= end {
                return Err(self.not_ready(format!("not ready after {deadline:?} (last: {last})")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One non-blocking probe: does `GET /healthz/ready` on 127.0.0.1:15021 inside the
    /// tunnel's namespace answer 200 right now? (Connection refused or any other status → false.)
    pub fn is_ready(&self) -> bool {
        matches!(self.readiness(), Ok(200))
    }

    fn readiness(&self) -> std::io::Result<u16> {
        self.ns()
            .run(|| http_get_status(port::READINESS, "/healthz/ready"))
    }

    /// `GET /healthz/ready`: status and body (which says why when it is not ready).
    pub fn readiness_answer(&self) -> Result<(u16, String)> {
        self.ns()
            .run(|| http_get(port::READINESS, "/healthz/ready"))
            .map_err(|e| Error::io("GET /healthz/ready on the tunnel", e))
    }

    /// `GET <path>` on the tunnel's admin port (127.0.0.1:15000 in its namespace): the body.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let owned = path.to_string();
        let (status, body) = self
            .ns()
            .run(move || http_get(port::ADMIN, &owned))
            .map_err(|e| Error::io(format!("GET {path} on the tunnel admin port"), e))?;
        if status != 200 {
            return Err(Error::Invalid(format!(
                "GET {path} answered {status}: {body}"
            )));
        }
        Ok(body)
    }

    /// The tunnel's `/config_dump`, parsed.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let body = self.admin_get("/config_dump")?;
        serde_json::from_str(&body)
            .map_err(|e| Error::Invalid(format!("/config_dump is not JSON ({e}): {body:.200}")))
    }

    /// Open fds, threads, CPU time and memory of the daemon right now (from `/proc/<pid>`).
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid())
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::TunnelNotReady {
            netns: self.ns().name().to_string(),
            reason,
            log_tail: self.process.default_tail(),
        }
    }

    /// The daemon's pid (the `ip netns exec` process execs it, so they are the same).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The namespace the tunnel runs in.
    pub fn ns(&self) -> &Netns {
        self.process.ns()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Everything the daemon wrote to stdout and stderr so far, ANSI colour codes removed.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The last `n` lines of [`log`](Self::log).
    pub fn log_tail(&self, n: usize) -> String {
        self.process.log_tail(n)
    }

    /// Access-log lines whose `key=value` fields include all of `fields`.
    pub fn access_lines(&self, fields: &[(&str, &str)]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| fields.iter().all(|(k, v)| field(line, k) == Some(*v)))
            .map(str::to_string)
            .collect()
    }

    /// Waits (up to `deadline`) for the first access-log line matching `fields` and returns it;
    /// panics with the log tail if none appears. Access lines are written when a connection
    /// ends, so callers poll rather than read once.
    pub fn wait_access_line(
        &self,
        fields: &[(&str, &str)],
        deadline: std::time::Duration,
    ) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(line) = self.access_lines(fields).into_iter().next() {
                return line;
            }
            if start.elapsed() > deadline {
                panic!(
                    "no access line with {fields:?} within {deadline:?}; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// SIGTERM, wait up to [`TERM_GRACE`], then SIGKILL. Returns the exit status.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.process.terminate()
    }
}

/// `dir/<node>-tunnel-<n>.log` for the first `n` that does not exist yet.
pub(crate) fn fresh_log_path(dir: &Path, node: &str) -> PathBuf {
    crate::process::fresh_log_path(dir, &format!("{node}-tunnel"))
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which tracing may emit even into files.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=value` in an access-log line (quotes stripped), if present.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|token| {
        let (k, v) = token.split_once('=')?;
        let k = k.rsplit(['{', '(', ',', ':']).next().unwrap_or(k);
        (k == key).then(|| v.trim_end_matches([',', '}', ')']).trim_matches('"'))
    })
}

/// Numeric `key=value` of an access-log line.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// `GET <path>` on 127.0.0.1:`port` of the current namespace; returns the HTTP status code.
pub fn http_get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let (status, _) = http_get(port, path)?;
    Ok(status)
}

/// `GET <path>` on 127.0.0.1:`port` of the current namespace; returns status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:.80}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::{field, field_u64};

    #[test]
    fn ansi_codes_are_stripped() {
        let line = "\u{1b}[3msrc\u{1b}[0m\u{1b}[2m=\u{1b}[0m10.77.1.10:4000 x";
        assert_eq!(super::strip_ansi(line), "src=10.77.1.10:4000 x");
    }

    #[test]
    fn fields_are_found_in_tracing_lines() {
        let line = r#"2025-01-01T00:00:00Z  INFO access: connection complete src.addr=10.77.1.10:4000 dst.addr=10.77.2.10:8080 src.identity="spiffe://cluster.local/ns/default/sa/client" protocol=HBONE bytes_sent=104857600 bytes_recv=12"#;
        assert_eq!(field(line, "src.addr"), Some("10.77.1.10:4000"));
        assert_eq!(field(line, "dst.addr"), Some("10.77.2.10:8080"));
        assert_eq!(
            field(line, "src.identity"),
            Some("spiffe://cluster.local/ns/default/sa/client")
        );
        assert_eq!(field(line, "dst.identity"), None);
        assert_eq!(field_u64(line, "bytes_sent"), Some(104857600));
        assert_eq!(field(line, "protocol"), Some("HBONE"));
    }
}
