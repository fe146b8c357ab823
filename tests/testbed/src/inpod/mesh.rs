//! [`InpodMesh`]: shared-mode tunnels running on a [`PodTopology`], one per node, each fed pod
//! namespaces by its own `nodetunnel-zds-agent` process ([`ZdsAgentProcess`]) — the way a
//! cluster's CNI agent feeds ztunnel, without linking the daemon's crate.
//!
//! ```text
//! let topo = PodTopology::two_node("demo", InpodRules::Apply)?;
//! MeshConfig::standard(8080).write(&topo.path("mesh.yaml"))?;
//! generate_ca(bin, &topo.path("ca"))?;
//! let bins = MeshBins { tunnel: bin, zds_agent: &sibling_binary(ZDS_AGENT_BIN)? };
//! let mesh = InpodMesh::start(&topo, bins, Mesh::File(&topo.path("mesh.yaml")), Ca::Dir(&topo.path("ca")), &[])?;
//! // every mesh pod is enrolled and both tunnels are ready
//! mesh.del(topo.pod("client2"))?;                 // `del uid-client2`, waits for the ack
//! ```
//!
//! Drop the mesh before the topology (its logs live in the topology's directory). Dropping it
//! stops the tunnels (SIGTERM) and then the agents (stdin closed: they finish and exit).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{PodNs, PodTopology};
use crate::config::{shared_tunnel_env, Ca, Mesh};
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::process::EnvMode;
use crate::tunnel::{strip_ansi, Tunnel, TunnelLaunch, READY_DEADLINE};

/// How long an agent gets for its socket to appear, a tunnel to connect, or a command's result.
pub const AGENT_DEADLINE: Duration = Duration::from_secs(20);

/// How long an agent gets to exit after its stdin closed, before SIGKILL.
const AGENT_GRACE: Duration = Duration::from_secs(5);

const TAIL_LINES: usize = 20;

/// The uid the mesh enrols `pod` under: `uid-<pod name>`.
pub fn uid_of(pod: &PodNs) -> String {
    format!("uid-{}", pod.name())
}

/// The workload info the mesh sends for `pod`: `default/<name>/<name>`, matching
/// [`crate::Workload::new`] (namespace `default`, service account = pod name).
pub fn workload_info_of(pod: &PodNs) -> String {
    format!("default/{0}/{0}", pod.name())
}

/// The binaries an [`InpodMesh`] runs.
#[derive(Clone, Copy, Debug)]
pub struct MeshBins<'a> {
    /// `nodetunnel`: one per node, in shared mode.
    pub tunnel: &'a Path,
    /// `nodetunnel-zds-agent` ([`crate::ZDS_AGENT_BIN`]): one per node, feeding its tunnel.
    pub zds_agent: &'a Path,
}

/// One node of the mesh. Field order is drop order: tunnel before agent.
struct MeshNode {
    name: String,
    tunnel: Tunnel,
    agent: ZdsAgentProcess,
    /// How its tunnel was started, so a replacement starts the same way.
    launch: TunnelLaunch,
}

/// Shared-mode tunnels on every node of a [`PodTopology`], each connected to its agent, every
/// mesh pod enrolled, every tunnel ready.
pub struct InpodMesh {
    nodes: Vec<MeshNode>,
    tunnel_bin: PathBuf,
    agent_bin: PathBuf,
}

impl InpodMesh {
    /// For each node of `topo`: starts `nodetunnel-zds-agent --socket <dir>/<node>-zds.sock`,
    /// starts the tunnel ([`shared_tunnel_env`] for `mesh_source` and `ca`, then `extra_env`, which
    /// wins over it), waits for the agent's `snapshot sent` (an empty snapshot), enrols the
    /// node's mesh pods one by one (`add uid-<pod> <netns path> default/<pod>/<pod>`, each
    /// acked `ok`), then waits for `/healthz/ready`. Errors carry the agent's output tail (and
    /// the tunnel's log tail when it is the tunnel that failed).
    pub fn start(
        topo: &PodTopology,
        bins: MeshBins<'_>,
        mesh_source: Mesh<'_>,
        ca: Ca<'_>,
        extra_env: &[(&str, &str)],
    ) -> Result<InpodMesh> {
        InpodMesh::start_launched(topo, bins, |node, socket| {
            let mut env = shared_tunnel_env(node, mesh_source, ca, socket);
            env.extend(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            TunnelLaunch {
                args: Vec::new(),
                env,
                env_mode: EnvMode::Inherit,
            }
        })
    }

    /// [`start`](Self::start), with each node's tunnel started as `launch(node, socket)` says
    /// (`socket`: the node's ZDS socket, for `INPOD_UDS`): for tests that control the whole
    /// command line, such as Istio's chart's.
    pub fn start_launched(
        topo: &PodTopology,
        bins: MeshBins<'_>,
        mut launch: impl FnMut(&str, &Path) -> TunnelLaunch,
    ) -> Result<InpodMesh> {
        let mut mesh = InpodMesh {
            nodes: Vec::new(),
            tunnel_bin: bins.tunnel.to_path_buf(),
            agent_bin: bins.zds_agent.to_path_buf(),
        };
        for node in topo.nodes() {
            let name = node.name();
            let socket = topo.path(&format!("{name}-zds.sock"));
            let agent_log = topo.path(&format!("{name}-zds-agent.log"));
            let agent = ZdsAgentProcess::spawn(node.ns(), bins.zds_agent, &socket, &agent_log)?;
            let launch = launch(name, &socket);
            let mut tunnel = topo.spawn_tunnel_launch(name, bins.tunnel, &launch)?;
            let snapshot = agent.wait_line_while(0, AGENT_DEADLINE, &mut tunnel, |l| {
                l.starts_with("snapshot sent:")
            })?;
            if !snapshot.ends_with("acks ok") {
                return Err(agent.failure("first snapshot", &snapshot));
            }
            for pod in topo.pods_on(name).filter(|p| p.mesh()) {
                agent.add(pod)?;
            }
            tunnel
                .wait_ready(READY_DEADLINE)
                .map_err(|e| agent.with_tail(e))?;
            mesh.nodes.push(MeshNode {
                name: name.to_string(),
                tunnel,
                agent,
                launch,
            });
        }
        Ok(mesh)
    }

    fn node(&self, name: &str) -> &MeshNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("the mesh has no node {name:?}"))
    }

    /// The tunnel of node `node`; panics if there is none.
    pub fn tunnel(&self, node: &str) -> &Tunnel {
        &self.node(node).tunnel
    }

    /// Mutable access, for [`Tunnel::wait_ready`] and [`Tunnel::try_wait`].
    pub fn tunnel_mut(&mut self, node: &str) -> &mut Tunnel {
        let found = self.nodes.iter_mut().find(|n| n.name == node);
        &mut found
            .unwrap_or_else(|| panic!("the mesh has no node {node:?}"))
            .tunnel
    }

    /// The agent of node `node`; panics if there is none.
    pub fn agent(&self, node: &str) -> &ZdsAgentProcess {
        &self.node(node).agent
    }

    /// `(node name, tunnel)` for every node, in the topology's order.
    pub fn tunnels(&self) -> impl Iterator<Item = (&str, &Tunnel)> {
        self.nodes.iter().map(|n| (n.name.as_str(), &n.tunnel))
    }

    /// The tunnels' pids (for [`crate::ProcStats`]), in node order.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.tunnel.pid()).collect()
    }

    /// Enrols `pod` with its node's agent; Ok once the tunnel acked it.
    pub fn add(&self, pod: &PodNs) -> Result<()> {
        self.agent(pod.node()).add(pod).map(drop)
    }

    /// Removes `pod` from its node's tunnel (`del uid-<pod>`); Ok once the tunnel acked it.
    pub fn del(&self, pod: &PodNs) -> Result<()> {
        self.agent(pod.node()).del(&uid_of(pod)).map(drop)
    }

    /// An in-place upgrade's first half on node `node`: starts a second tunnel the way the
    /// first was started, in `ns` (its own namespace, as a tunnel pod that is not
    /// host-network has, so its admin and readiness ports are its own), logging to
    /// `log_path`; waits until the agent retired the old connection and sent the new tunnel
    /// its snapshot (every acked), and the new tunnel is ready; then makes it the node's
    /// tunnel and returns the old one, still running and serving, for the caller to SIGTERM
    /// and watch drain.
    pub fn replace_tunnel(&mut self, node: &str, ns: &Netns, log_path: &Path) -> Result<Tunnel> {
        let bin = self.tunnel_bin.clone();
        let n = self.node_mut(node);
        let from = n.agent.line_count();
        let mut tunnel = Tunnel::spawn_launch(ns, &bin, &n.launch, log_path)?;
        n.agent
            .wait_line_while(from, AGENT_DEADLINE, &mut tunnel, |l| {
                l == "tunnel replaced by a newer connection"
            })?;
        let snapshot = n
            .agent
            .wait_line_while(from, AGENT_DEADLINE, &mut tunnel, |l| {
                l.starts_with("snapshot sent:")
            })?;
        if !snapshot.ends_with("acks ok") {
            return Err(n.agent.failure("the new tunnel's snapshot", &snapshot));
        }
        tunnel
            .wait_ready(READY_DEADLINE)
            .map_err(|e| n.agent.with_tail(e))?;
        Ok(std::mem::replace(&mut n.tunnel, tunnel))
    }

    /// Restarts node `node`'s agent as a restarted CNI agent comes back: the old one stops
    /// (stdin closed: it exits and removes its socket), a new one starts on the same socket
    /// with `--hold`, is given `pods` (each `pending`: no tunnel yet), then `serve`. The
    /// tunnel, which kept serving its pods meanwhile, reconnects and gets all of them in one
    /// snapshot. Ok once that snapshot is acked and the tunnel is ready again.
    pub fn restart_agent<'p>(
        &mut self,
        node: &str,
        pods: impl IntoIterator<Item = &'p PodNs>,
    ) -> Result<()> {
        let agent_bin = self.agent_bin.clone();
        let n = self.node_mut(node);
        let (socket, log_path, ns) = (
            n.agent.socket.clone(),
            n.agent.log_path.with_extension("restarted.log"),
            n.agent._ns.clone(),
        );
        let old = std::mem::replace(
            &mut n.agent,
            ZdsAgentProcess::spawn_with(&ns, &agent_bin, &socket, &log_path, &["--hold"])?,
        );
        // After the new one bound the socket: the old one removes the file only if it is
        // still its own.
        old.stop();
        let mut count = 0;
        for pod in pods {
            let uid = uid_of(pod);
            n.agent.request(
                &add_command(pod),
                |l| is_result_of(l, "add", &uid),
                &format!("pending add {uid}: no tunnel connected"),
            )?;
            count += 1;
        }
        let from = n.agent.line_count();
        n.agent.send("serve")?;
        let snapshot = n
            .agent
            .wait_line_while(from, AGENT_DEADLINE, &mut n.tunnel, |l| {
                l.starts_with("snapshot sent:")
            })?;
        if snapshot != format!("snapshot sent: {count} pods, acks ok") {
            return Err(n.agent.failure("the snapshot after the restart", &snapshot));
        }
        n.tunnel
            .wait_ready(READY_DEADLINE)
            .map_err(|e| n.agent.with_tail(e))
    }

    fn node_mut(&mut self, name: &str) -> &mut MeshNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("the mesh has no node {name:?}"))
    }

    /// Stops every tunnel (SIGTERM, see [`Tunnel::stop`]) and then its agent; returns
    /// `(node, tunnel status, agent status)` per node.
    pub fn stop(self) -> Vec<(String, Option<ExitStatus>, Option<ExitStatus>)> {
        self.nodes
            .into_iter()
            .map(|n| (n.name, n.tunnel.stop(), n.agent.stop()))
            .collect()
    }
}

/// Stdout lines of an agent, appended by a reader thread.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: Vec<String>,
    /// Commands (`> add …`) and output lines (`< ack add … ok`) in the order they happened.
    transcript: Vec<String>,
    /// The agent's stdout reached EOF (it exited).
    closed: bool,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`ZdsAgentProcess::find_line`] found no line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Missing {
    /// The agent's stdout closed (it exited).
    Exited,
    TimedOut,
}

impl Missing {
    fn as_str(self) -> &'static str {
        match self {
            Missing::Exited => "the agent exited",
            Missing::TimedOut => "timed out",
        }
    }
}

/// A `nodetunnel-zds-agent` process in a node namespace: commands go to its stdin, its stdout
/// lines are collected (both formats: the tool's `--help`), its stderr
/// goes to a log file. Dropping it closes stdin (the agent finishes and exits), then SIGKILLs
/// it if it is still running after a grace period.
pub struct ZdsAgentProcess {
    child: Option<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    output: Arc<Output>,
    reader: Option<JoinHandle<()>>,
    socket: PathBuf,
    log_path: PathBuf,
    _ns: Netns,
}

impl ZdsAgentProcess {
    /// Runs `ip netns exec <ns> <bin> --socket <socket>` (`bin`: `nodetunnel-zds-agent`; stderr
    /// to `log_path`) and waits until the socket exists.
    pub fn spawn(ns: &Netns, bin: &Path, socket: &Path, log_path: &Path) -> Result<Self> {
        ZdsAgentProcess::spawn_with(ns, bin, socket, log_path, &[])
    }

    /// [`spawn`](Self::spawn) with extra arguments (`--hold`). Waits for the socket file only
    /// when there was none: a restarted agent replaces the old one's file.
    pub fn spawn_with(
        ns: &Netns,
        bin: &Path,
        socket: &Path,
        log_path: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let log = File::create(log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io(format!("starting the zds agent in {}", ns.name()), e))?;
        netns::register_pid(child.id() as i32);
        let output = Arc::new(Output::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let out = output.clone();
        let reader = thread::Builder::new()
            .name("zds-agent-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut state = out.lock();
                    state.transcript.push(format!("< {line}"));
                    state.lines.push(line);
                    drop(state);
                    out.changed.notify_all();
                }
                out.lock().closed = true;
                out.changed.notify_all();
            })
            .map_err(|e| Error::io("spawning the agent's stdout reader", e))?;
        let agent = ZdsAgentProcess {
            stdin: Mutex::new(child.stdin.take()),
            child: Some(child),
            output,
            reader: Some(reader),
            socket: socket.to_path_buf(),
            log_path: log_path.to_path_buf(),
            _ns: ns.clone(),
        };
        let end = Instant::now() + AGENT_DEADLINE;
        while !socket.exists() {
            if agent.output.lock().closed || Instant::now() >= end {
                return Err(agent.failure("listening", "no socket file"));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The SOCK_SEQPACKET socket it listens on (the tunnel's `INPOD_UDS`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().lines.clone()
    }

    /// Number of stdout lines so far (a cursor for [`wait_line`](Self::wait_line)).
    pub fn line_count(&self) -> usize {
        self.output.lock().lines.len()
    }

    /// Commands sent (`> add …`) and stdout lines (`< ack add … ok`), in order.
    pub fn transcript(&self) -> Vec<String> {
        self.output.lock().transcript.clone()
    }

    /// Writes one command line to the agent's stdin.
    pub fn send(&self, command: &str) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stdin) = stdin.as_mut() else {
            return Err(self.failure(command, "stdin already closed"));
        };
        self.output.lock().transcript.push(format!("> {command}"));
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|e| self.failure(command, &format!("writing to its stdin: {e}")))
    }

    /// The first stdout line at index `from` or later that satisfies `pred`, waiting up to
    /// `deadline`. Fails (with the output tail) at the deadline or when the agent exits.
    pub fn wait_line(
        &self,
        from: usize,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.find_line(from, Instant::now() + deadline, pred)
            .map_err(|missing| self.failure("waiting for a line", missing.as_str()))
    }

    /// Like [`wait_line`](Self::wait_line), but fails early if `tunnel` exits meanwhile
    /// ([`Error::TunnelNotReady`] with both tails).
    fn wait_line_while(
        &self,
        from: usize,
        deadline: Duration,
        tunnel: &mut Tunnel,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let end = Instant::now() + deadline;
        loop {
            let slice_end = (Instant::now() + Duration::from_millis(100)).min(end);
            match self.find_line(from, slice_end, &pred) {
                Ok(line) => return Ok(line),
                Err(Missing::TimedOut) if Instant::now() < end => {}
                Err(missing) => return Err(self.failure("waiting for a line", missing.as_str())),
            }
            if let Some(status) = tunnel.try_wait()? {
                return Err(Error::TunnelNotReady {
                    netns: tunnel.ns().name().to_string(),
                    reason: format!("process exited with {status} before its agent's snapshot"),
                    log_tail: format!(
                        "{}\n{}",
                        tunnel.log_tail(TAIL_LINES),
                        self.output_tail(TAIL_LINES)
                    ),
                });
            }
        }
    }

    /// The first line at index `from` or later that satisfies `pred`, waiting until `end`.
    fn find_line(
        &self,
        from: usize,
        end: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> std::result::Result<String, Missing> {
        let mut state = self.output.lock();
        loop {
            if let Some(line) = state.lines.iter().skip(from).find(|l| pred(l)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if state.closed {
                return Err(Missing::Exited);
            }
            if now >= end {
                return Err(Missing::TimedOut);
            }
            state = self
                .output
                .changed
                .wait_timeout(state, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends `command` and waits for its result line: the first line after the ones already
    /// printed that `is_result` accepts. Ok if it equals `ok_line`.
    fn request(
        &self,
        command: &str,
        is_result: impl Fn(&str) -> bool,
        ok_line: &str,
    ) -> Result<String> {
        let from = self.line_count();
        self.send(command)?;
        let line = self.wait_line(from, AGENT_DEADLINE, is_result)?;
        if line == ok_line {
            Ok(line)
        } else {
            Err(self.failure(command, &line))
        }
    }

    /// `add uid-<pod> <netns path> default/<pod>/<pod>`; Ok (the `ack add … ok` line) once the
    /// tunnel acked it with success.
    pub fn add(&self, pod: &PodNs) -> Result<String> {
        let uid = uid_of(pod);
        self.request(
            &add_command(pod),
            |l| is_result_of(l, "add", &uid),
            &format!("ack add {uid} ok"),
        )
    }

    /// `del <uid>`; Ok (the `ack del … ok` line) once the tunnel acked it with success.
    pub fn del(&self, uid: &str) -> Result<String> {
        self.request(
            &format!("del {uid}"),
            |l| is_result_of(l, "del", uid),
            &format!("ack del {uid} ok"),
        )
    }

    /// The last `n` stdout lines, then the last `n` lines of its stderr log.
    pub fn output_tail(&self, n: usize) -> String {
        let lines = self.lines();
        let stdout = lines[lines.len().saturating_sub(n)..].join("\n");
        let log = strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default());
        let log_lines: Vec<&str> = log.lines().collect();
        let stderr = log_lines[log_lines.len().saturating_sub(n)..].join("\n");
        format!("--- zds agent stdout (tail) ---\n{stdout}\n--- zds agent stderr (tail) ---\n{stderr}\n--- end ---")
    }

    /// An error saying `what` failed because of `why`, with the output tail.
    fn failure(&self, what: &str, why: &str) -> Error {
        Error::Command {
            cmd: format!(
                "nodetunnel-zds-agent --socket {}: {what}",
                self.socket.display()
            ),
            status: why.to_string(),
            stderr: self.output_tail(TAIL_LINES),
        }
    }

    /// `e` with the agent's output tail appended to its tunnel log tail (or to its text).
    fn with_tail(&self, e: Error) -> Error {
        match e {
            Error::TunnelNotReady {
                netns,
                reason,
                log_tail,
            } => Error::TunnelNotReady {
                netns,
                reason,
                log_tail: format!("{log_tail}\n{}", self.output_tail(TAIL_LINES)),
            },
            other => self.failure("waiting for the tunnel", &other.to_string()),
        }
    }

    /// Closes stdin (the agent finishes queued commands and exits), waits up to a grace period,
    /// then SIGKILLs it. Returns its exit status.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        let end = Instant::now() + AGENT_GRACE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        netns::unregister_pid(child.id() as i32);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for ZdsAgentProcess {
    fn drop(&mut self) {
        self.terminate();
        if thread::panicking() {
            // Not eprintln!: a closed stderr would panic again, and a panic during a panic
            // aborts before the topology's namespaces are removed.
            let _ = writeln!(std::io::stderr(), "{}", self.output_tail(TAIL_LINES));
        }
    }
}

/// `add uid-<pod> <netns path> default/<pod>/<pod>`.
fn add_command(pod: &PodNs) -> String {
    format!(
        "add {} {} {}",
        uid_of(pod),
        pod.ns().path().display(),
        workload_info_of(pod)
    )
}

/// Whether `line` is the result of an `<op>` (`add`/`del`) of `uid` (see the line table in
/// `nodetunnel-zds-agent --help`).
fn is_result_of(line: &str, op: &str, uid: &str) -> bool {
    let Some(rest) = line
        .strip_prefix("ack ")
        .or_else(|| line.strip_prefix("pending "))
        .or_else(|| line.strip_prefix("error "))
    else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(op).and_then(|r| r.strip_prefix(' ')) else {
        return false;
    };
    rest.strip_prefix(uid)
        .is_some_and(|r| r.starts_with(' ') || r.starts_with(':'))
}

#[cfg(test)]
mod tests {
    use super::is_result_of;

    #[test]
    fn results_are_matched_by_op_and_whole_uid() {
        assert!(is_result_of("ack add uid-client ok", "add", "uid-client"));
        assert!(is_result_of(
            "ack add uid-client error: netns busy",
            "add",
            "uid-client"
        ));
        assert!(is_result_of(
            "pending del uid-client: no tunnel connected",
            "del",
            "uid-client"
        ));
        assert!(is_result_of(
            "error add uid-client: pod uid-client: cannot open netns",
            "add",
            "uid-client"
        ));
        assert!(!is_result_of("ack add uid-client2 ok", "add", "uid-client"));
        assert!(!is_result_of("ack del uid-client ok", "add", "uid-client"));
        assert!(!is_result_of("tunnel connected", "add", "uid-client"));
        assert!(!is_result_of("snapshot sent: 0 pods, acks ok", "add", "x"));
    }
}
