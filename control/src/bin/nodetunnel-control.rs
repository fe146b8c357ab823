//! `nodetunnel-control`: serves Istio's delta xDS and CA APIs from a YAML mesh file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nodetunnel_control::grpc_listener::GrpcBounds;
use nodetunnel_control::{self as control, ControlOptions};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A small control plane for nodetunnel (and ztunnel): delta xDS and the Istio CA, served from a YAML mesh file",
    long_about = LONG_ABOUT
)]
struct Cli {
    /// The mesh: YAML with top-level workloads, services, policies (the LOCAL_XDS_PATH shape).
    /// Watched for changes; an edit that does not load is reported and the last good mesh kept.
    #[arg(long, env = "MESH_FILE", value_name = "PATH")]
    mesh: PathBuf,

    /// Address for xDS and the CA (gRPC over TLS), like istiod's 15012.
    #[arg(long, env = "CONTROL_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,

    /// Address for plain-HTTP /ready, /debug/connections and /debug/mesh.
    #[arg(long, env = "CONTROL_STATUS_ADDR", default_value = "127.0.0.1:15014")]
    status_addr: SocketAddr,

    /// Directory with Istio's plug-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem). If it is empty or missing, a new root is generated into it. Without
    /// this option a throwaway root is generated in memory.
    #[arg(long, env = "CA_DIR", value_name = "DIR")]
    ca_dir: Option<PathBuf>,

    /// Write the root certificate (PEM) here, for the tunnels' XDS_ROOT_CA and CA_ROOT_CA.
    #[arg(long, value_name = "PATH")]
    write_root: Option<PathBuf>,

    /// DNS name or IP for the TLS serving certificate; repeat for several. Default:
    /// istiod.istio-system.svc, localhost, 127.0.0.1. The --listen IP is always added when it
    /// is a specific address.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,

    /// File of bearer tokens accepted from tunnels, one per line bound to a node:
    /// `<token> node=<node-name> [label]` (`#` comments). A token obtains certificates only for
    /// workloads on its node. Re-read when it changes; a bad line stops start-up. Without it
    /// only client certificates chained to the mesh root are accepted.
    #[arg(long, env = "TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Longest lifetime of an issued workload certificate, e.g. 24h, 90m, 3600s.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_cert_ttl: Duration,

    /// Trust domain for generated CAs and for workloads that do not name one.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,

    /// Cluster id for workloads that do not name one.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// From accept to the end of a client's HTTP/2 preface (TLS handshake included); a client
    /// still handshaking then is closed.
    #[arg(long, env = "CONTROL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// gRPC connections held at once; more are closed at accept (logged).
    #[arg(long, env = "CONTROL_MAX_CONNECTIONS", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// Of those, from one source address.
    #[arg(long, env = "CONTROL_MAX_CONNECTIONS_PER_IP", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_ip: u32,

    /// An HTTP/2 PING after this long without a frame from a client...
    #[arg(long, env = "CONTROL_PING_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    ping_interval: Duration,

    /// ...and the connection is closed when it is not answered within this.
    #[arg(long, env = "CONTROL_PING_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    ping_timeout: Duration,

    /// Load the mesh file, the token file and the CA as start-up does, print what would be
    /// served as JSON on stdout and exit (1 with the start-up error); binds nothing.
    #[arg(long)]
    check_config: bool,
}

const LONG_ABOUT: &str = "\
A small control plane for nodetunnel (and ztunnel): delta xDS and the Istio CA, served from a
YAML mesh file.

Serves on one TLS port (--listen):
  envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources
      types istio.workload.Address and istio.security.Authorization; every change to the mesh
      file is pushed as only the resources whose content changed, plus removals
  istio.v1.auth.IstioCertificateService/CreateCertificate
      certificates for identities of workloads in the current mesh

Callers authenticate with a bearer token from --token-file or a client certificate from the
mesh CA. Each token is bound to a node (`<token> node=<node-name> [label]` per line) and gets
certificates only for identities of workloads scheduled on that node; a client certificate
gets only its own identity. Point a tunnel at it with XDS_ADDRESS=https://<host>:15012, CA_ADDRESS=the same, and
XDS_ROOT_CA/CA_ROOT_CA=the file written by --write-root.

Status (--status-addr): /ready, /debug/connections, /debug/mesh. Logs go to stderr (RUST_LOG).
SIGTERM or SIGINT closes all streams and exits 0; bad input exits 1 with the reason.";

/// Go-style durations (`90s`, `15m`, `24h`, `1h30m`), the same syntax as the tunnel's
/// `SECRET_TTL`; must be positive.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match nodetunnel::config::parse_duration(text) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("the duration must be positive".into()),
        None => Err(format!(
            "{text:?} is not a duration like 90s, 15m, 24h or 1h30m"
        )),
    }
}

fn main() -> ExitCode {
    nodetunnel_base::logging::init(None);
    let cli = Cli::parse();
    let opts = ControlOptions {
        mesh_file: cli.mesh,
        listen: cli.listen,
        status_addr: cli.status_addr,
        ca_dir: cli.ca_dir,
        write_root: cli.write_root,
        tls_sans: cli.tls_sans,
        token_file: cli.token_file,
        max_cert_ttl: cli.max_cert_ttl,
        trust_domain: cli.trust_domain,
        cluster_id: cli.cluster_id,
        grpc_bounds: GrpcBounds {
            handshake_timeout: cli.handshake_timeout,
            max_connections: cli.max_connections as usize,
            max_connections_per_ip: cli.max_connections_per_ip as usize,
            ping_interval: cli.ping_interval,
            ping_timeout: cli.ping_timeout,
        },
    };
    if cli.check_config {
        return check_config(&opts);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("control")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodetunnel-control: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(control::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("nodetunnel-control: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Read besides the options: the log filter and format (`nodetunnel_base::logging`) and the
/// standard library's backtrace switch.
const PROCESS_VARIABLES: [&str; 3] = ["RUST_LOG", "LOG_FORMAT", "RUST_BACKTRACE"];

/// `--check-config`: the report on stdout, with the variables read (each option's `env`) and
/// the given ones nothing reads; or the error start-up would stop with.
fn check_config(opts: &ControlOptions) -> ExitCode {
    use clap::CommandFactory;
    match control::check(opts) {
        Ok(mut report) => {
            let read: std::collections::BTreeSet<String> = Cli::command()
                .get_arguments()
                .filter_map(|arg| arg.get_env())
                .map(|name| name.to_string_lossy().into_owned())
                .chain(PROCESS_VARIABLES.map(str::to_string))
                .collect();
            let ignored: std::collections::BTreeSet<String> = std::env::vars()
                .map(|(name, _)| name)
                .filter(|name| !read.contains(name))
                .collect();
            report["variables"] = serde_json::json!({"read": read, "ignored": ignored});
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nodetunnel-control: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_garbage() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("90").is_err(), "a unit is required");
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").unwrap_err().contains("not a duration"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
