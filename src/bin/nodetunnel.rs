//! `nodetunnel`: the node tunnel daemon, plus `generate-ca` to create a shared mesh root and
//! `zds-agent`, a stand-in node agent driven through stdin/stdout (formats in
//! `nodetunnel::inpod::agent`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Per-node HBONE tunnel for ambient service mesh (configured by environment variables; see README)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new mesh root CA in Istio's plug-in CA file layout (for LOCAL_CA_DIR).
    GenerateCa {
        /// Directory to write ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem into.
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Act as the CNI node agent's ZDS side, driven by line commands on stdin.
    #[command(long_about = ZDS_AGENT_HELP)]
    ZdsAgent {
        /// Socket to listen on (SOCK_SEQPACKET; a stale file is replaced). Point the tunnel's
        /// INPOD_UDS here.
        #[arg(long)]
        socket: PathBuf,
    },
}

const ZDS_AGENT_HELP: &str = "\
Act as the CNI node agent's ZDS side, driven by line commands on stdin.

Listens on --socket. Each tunnel that connects gets a snapshot of the recorded pods (one
AddWorkload with the pod's netns descriptor each, then SnapshotSent), then every later add and
del. The newest connection wins.

Commands (stdin, one per line; blank lines and # comments are ignored):
  add <uid> <netns> [<namespace>/<name>/<service-account>]
      <netns> is a path if it contains '/', else a name under /run/netns/
  del <uid>
  list
A malformed command prints 'usage error: ...' on stderr and is skipped.

Output (stdout, one line per result or event, in the order they happen; <op> is add or del):
  ack <op> <uid> ok
  ack <op> <uid> error: <text>
  pending <op> <uid>: no tunnel connected
  pending <op> <uid>: tunnel lost: <error>
  error add <uid>: <error>                      (netns did not open; nothing recorded)
  list <n> pods, tunnel connected | list <n> pods, no tunnel
  pod <uid> <netns-path> <namespace>/<name>/<service-account> | pod <uid> <netns-path> -
  tunnel replaced by a newer connection
  tunnel connected
  snapshot keep <uid>: <error>                  (netns did not open; sent as KeepWorkload)
  snapshot ack <request> error: <text>          (<request>: add <uid>, keep <uid>, snapshot-sent)
  snapshot sent: <n> pods, acks ok | snapshot sent: <n> pods, <k> error acks
  tunnel disconnected: <reason>

EOF on stdin (or SIGINT/SIGTERM) finishes queued commands, closes the socket, removes the
socket file and exits 0. Logs go to stderr (RUST_LOG).";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenerateCa { dir, trust_domain }) => generate_ca(&dir, &trust_domain),
        Some(Command::ZdsAgent { socket }) => zds_agent(socket),
        None => run_daemon(),
    }
}

fn generate_ca(dir: &std::path::Path, trust_domain: &str) -> ExitCode {
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))
        .and_then(|_| {
            nodetunnel::identity::LocalCa::generate(trust_domain).map_err(|e| e.to_string())
        })
        .and_then(|ca| ca.write(dir).map_err(|e| e.to_string()));
    match result {
        Ok(()) => {
            eprintln!(
                "wrote a new root CA for trust domain {trust_domain} to {}",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn zds_agent(socket: PathBuf) -> ExitCode {
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
    match runtime.block_on(agent_cli::run(socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

mod agent_cli {
    use std::io::Write;
    use std::path::PathBuf;

    use nodetunnel::inpod::agent::{lines, AgentEvent, ZdsAgent};
    use nodetunnel::inpod::zds_server::{ZdsServer, ZdsServerError, ACK_TIMEOUT};
    use tokio::io::AsyncBufReadExt;
    use tokio::signal::unix::{signal, SignalKind};

    /// Serves until EOF on stdin or SIGINT/SIGTERM.
    pub(super) async fn run(socket: PathBuf) -> Result<(), ZdsServerError> {
        let server = ZdsServer::bind(&socket)?;
        tracing::info!(socket = %socket.display(), "zds agent listening");
        let (agent, mut events) = ZdsAgent::start(server, ACK_TIMEOUT);
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        loop {
            // All cancel safe: `next_line`, channel and signal receives.
            tokio::select! {
                line = stdin.next_line() => match line {
                    Ok(Some(line)) => match lines::parse(&line) {
                        Ok(Some(request)) => agent.submit(request),
                        Ok(None) => {}
                        Err(e) => eprintln!("usage error: {e} (commands: {})", lines::USAGE),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("reading stdin: {e}");
                        break;
                    }
                },
                Some(event) = events.recv() => print(&event),
                Some(()) = recv(&mut interrupt) => break,
                Some(()) = recv(&mut terminate) => break,
            }
        }
        // Finish the queued commands, then print what is left.
        agent.shutdown().await;
        while let Some(event) = events.recv().await {
            print(&event);
        }
        Ok(())
    }

    async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
        match signal {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }

    fn print(event: &AgentEvent) {
        let mut out = std::io::stdout().lock();
        for line in lines::render(event) {
            // A closed stdout (the driver went away) is not our problem; stdin EOF follows.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

fn run_daemon() -> ExitCode {
    let config = match nodetunnel::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .thread_name("worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(nodetunnel::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
