//! `nodetunnel`: the node tunnel daemon, plus `generate-ca` to create a shared mesh root.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Run the daemon, as with no command: `proxy ztunnel` is how Istio's ztunnel image (and
    /// so its Helm chart) starts the binary, accepted so ours drops in unchanged.
    Proxy {
        /// The proxy kind; only the node tunnel (`ztunnel`) is implemented.
        #[arg(value_enum)]
        kind: ProxyKind,
    },
    /// Load the configuration from the environment as start-up does, print what the tunnel
    /// would serve (addresses, sources, the variables read and ignored) as JSON on stdout and
    /// exit; exit 1 with the error start-up would stop with.
    CheckConfig,
    /// Write a new mesh root CA in Istio's plug-in CA file layout (for LOCAL_CA_DIR).
    GenerateCa {
        /// Directory to write ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem into.
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

/// ztunnel's `proxy <kind>` kinds we serve.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProxyKind {
    Ztunnel,
}

fn main() -> ExitCode {
    nodetunnel_base::logging::init(None);
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenerateCa { dir, trust_domain }) => generate_ca(&dir, &trust_domain),
        Some(Command::CheckConfig) => check_config(),
        Some(Command::Proxy {
            kind: ProxyKind::Ztunnel,
        })
        | None => run_daemon(),
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

fn check_config() -> ExitCode {
    let vars = std::env::vars().collect();
    match nodetunnel::config::check_vars(&vars) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as ztunnel does: every
/// connection the tunnel carries takes two or more, and in shared mode every pod's sockets are
/// this process's, so the usual soft limit (often 1024) would refuse connections long before
/// the connection caps (`HBONE_MAX_CONNECTIONS`) or the machine would.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open files limit"),
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open files limit"),
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
    raise_open_files_limit();
    tracing::info!(
        worker_threads = config.worker_threads,
        "starting the data path runtime"
    );
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
