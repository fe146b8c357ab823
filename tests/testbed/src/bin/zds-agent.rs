//! `nodetunnel-zds-agent`: the CNI node agent's ZDS side without Kubernetes, driven by line
//! commands on stdin, for the demo, the bench, tests and trying a tunnel by hand. It is the
//! `nodetunnel_zds` library's snapshotting agent ([`ZdsAgent`]) behind a line protocol; the
//! protocol (commands and every output line) is [`HELP`], which `--help` prints.
//!
//! A dev tool: it lives in the testbed, not in the production `nodetunnel` binary.

#[path = "zds-agent/commands.rs"]
mod commands;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nodetunnel_base::signal;
use nodetunnel_zds::agent::{lines, AgentEvent, ZdsAgent};
use nodetunnel_zds::server::{ZdsServer, ZdsServerError, ACK_TIMEOUT};
use tokio::io::AsyncBufReadExt;

/// The line protocol. Scripts and the testbed (`inpod::mesh::ZdsAgentProcess`) rely on it: keep
/// it stable, and keep this text in step with [`commands`] and `nodetunnel_zds::agent::lines`.
const HELP: &str = "\
Act as the CNI node agent's ZDS side, driven by line commands on stdin.

Listens on --socket. Each tunnel that connects gets a snapshot of the recorded pods (one
AddWorkload with the pod's netns descriptor each, then SnapshotSent), then every later add and
del. The newest connection wins; an older one is sent only dels until its tunnel closes it.

Commands (stdin, one per line; blank lines and lines starting with # are ignored):
  add <uid> <netns> [<namespace>/<name>/<service-account>]
      <netns> is a path if it contains '/', else a name under /run/netns/
  del <uid>        forwarded even for a uid the agent does not know
  list
  serve            under --hold: start accepting tunnels (otherwise: nothing to do)
A malformed command prints 'usage error: <reason> (commands: ...)' on stderr and is skipped.

Output (stdout, exactly one line per result or event, in the order they happened in the agent;
<op> is add or del; error texts are joined onto one line):
  ack <op> <uid> ok                             the tunnel acked with success
  ack <op> <uid> error: <text>                  the tunnel acked with an error
  pending <op> <uid>: no tunnel connected       recorded; the next snapshot reflects it
  pending <op> <uid>: tunnel lost: <error>      the tunnel failed on it and was dropped; recorded
  error add <uid>: <error>                      the netns did not open; nothing recorded or sent
  list <n> pods, tunnel connected | list <n> pods, no tunnel
                                                then n pod lines:
  pod <uid> <netns-path> <namespace>/<name>/<service-account> | pod <uid> <netns-path> -
  tunnel replaced by a newer connection         the older connection is retired
  tunnel connected                              a tunnel said hello; the snapshot follows
  snapshot keep <uid>: <error>                  netns did not open; sent as KeepWorkload
  snapshot ack <request> error: <text>          <request>: add <uid>, keep <uid>, snapshot-sent
  snapshot sent: <n> pods, acks ok | snapshot sent: <n> pods, <k> error acks
                                                the tunnel is current
  tunnel disconnected: <reason>                 dropped; waiting for the next connection
A snapshot's 'snapshot keep' and 'snapshot ack' lines come just before its 'snapshot sent'.

--hold: tunnels are accepted only after the 'serve' command, as a restarted CNI agent waits for
its first sync: add the pods first (each prints 'pending add <uid>: no tunnel connected'), then
serve, so a reconnecting tunnel gets the whole snapshot and not an empty one (which would drain
every pod it serves). A tunnel connecting meanwhile waits in the socket's backlog.

EOF on stdin (or SIGINT/SIGTERM) finishes the queued commands, closes the socket, removes the
socket file and exits 0. Logs go to stderr (RUST_LOG, default info).

Example:
  nodetunnel-zds-agent --socket /run/nt.sock     then type: add pod1 mypodns default/pod1/sa1
  PROXY_MODE=shared INPOD_UDS=/run/nt.sock ... nodetunnel";

#[derive(Parser)]
#[command(
    version,
    about = "Act as the CNI node agent's ZDS side, driven by line commands on stdin",
    long_about = HELP
)]
struct Cli {
    /// Socket to listen on (SOCK_SEQPACKET; a stale file is replaced). Point the tunnel's
    /// INPOD_UDS here.
    #[arg(long)]
    socket: PathBuf,
    /// Accept tunnels only after the `serve` command (see the line protocol).
    #[arg(long)]
    hold: bool,
}

fn main() -> ExitCode {
    nodetunnel_base::logging::init(None);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.socket, cli.hold)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Listen(#[from] ZdsServerError),
    #[error("cannot install the SIGINT/SIGTERM handlers: {0}")]
    Signal(std::io::Error),
}

/// Serves until EOF on stdin or SIGINT/SIGTERM; under `hold`, accepts tunnels only after the
/// `serve` command.
async fn run(socket: PathBuf, hold: bool) -> Result<(), RunError> {
    let mut shutdown = std::pin::pin!(signal::shutdown().map_err(RunError::Signal)?);
    let server = ZdsServer::bind(&socket)?;
    tracing::info!(socket = %socket.display(), hold, "zds agent listening");
    let (serve, serving) = tokio::sync::oneshot::channel::<()>();
    let mut serve = Some(serve);
    if !hold {
        if let Some(tx) = serve.take() {
            let _ = tx.send(());
        }
    }
    let gate = async move {
        // A dropped sender (stdin closed while held) opens nothing: the agent is stopping.
        if serving.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let (agent, mut events) = ZdsAgent::start_when(server, ACK_TIMEOUT, gate);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        // All cancel safe: `next_line`, channel and signal receives.
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(line)) if line.trim() == commands::SERVE => {
                    if let Some(tx) = serve.take() {
                        tracing::info!("serve: accepting tunnels");
                        let _ = tx.send(());
                    }
                }
                Ok(Some(line)) => match commands::parse(&line) {
                    Ok(Some(request)) => agent.submit(request),
                    Ok(None) => {}
                    Err(e) => eprintln!("usage error: {e} (commands: {})", commands::USAGE),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading stdin: {e}");
                    break;
                }
            },
            Some(event) = events.recv() => print(&event),
            signal = &mut shutdown => {
                tracing::info!("{signal}: finishing the queued commands");
                break;
            }
        }
    }
    // Finish the queued commands, then print what is left.
    agent.shutdown().await;
    while let Some(event) = events.recv().await {
        print(&event);
    }
    Ok(())
}

fn print(event: &AgentEvent) {
    let mut out = std::io::stdout().lock();
    for line in lines::render(event) {
        // A closed stdout (the driver went away) is not our problem; stdin EOF follows.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
