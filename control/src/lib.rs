//! `nodetunnel-control`: a small standalone control plane serving Istio's delta xDS and CA APIs
//! from a YAML mesh description (the `LOCAL_XDS_PATH` shape), so a mesh runs without istiod.
//!
//! Flow: `watch` loads the file into a `mesh` of versioned resources and publishes each good
//! generation; `xds_server` streams them to tunnels (`push` cuts responses to size,
//! `connections` records what each tunnel got); `ca_service` signs workload certificates for
//! identities the current mesh contains (to a node's token, only its node's); `auth` decides who
//! may call either and which node a token speaks for; `status` serves
//! `/ready` and the debug endpoints; `grpc_listener` terminates TLS within the port's bounds
//! (caps, handshake deadline). [`run`] wires them onto one TLS port, like istiod's 15012.

pub mod auth;
pub mod ca_service;
mod check;
pub mod connections;
mod encode;
pub mod grpc_listener;
mod mesh;
mod push;
mod status;
pub mod watch;
pub mod xds_server;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_base::readiness::Readiness;
use nodetunnel_base::signal;
use nodetunnel_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use nodetunnel_proto::istio::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use auth::Authenticator;
use ca_service::{CaService, Placement};
use connections::Connections;
use grpc_listener::{GrpcBounds, Incoming, TlsSetupError};
use nodetunnel::identity::{CaError, LocalCa, ROOT_CERT_FILE};
use nodetunnel::state::Defaults;
use status::StatusState;
use watch::{MeshWatcher, WatchError};
use xds_server::{AdsServer, StreamLimits};

pub use check::check;

/// Istio's default for `--tls-san`: the name tunnels dial (`istiod.istio-system.svc:15012`), and
/// loopback for local runs.
pub const DEFAULT_TLS_SANS: [&str; 3] = ["istiod.istio-system.svc", "localhost", "127.0.0.1"];

/// The serving certificate is issued at start-up; a year outlives any sensible uptime.
pub(crate) const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Largest xDS request accepted. A reconnecting tunnel lists every resource it holds in
/// `initial_resource_versions` — about 80 bytes each, so 8 MiB at 100,000 workloads — which
/// tonic's default 4 MiB limit would refuse, leaving the tunnel unable to reconnect at all.
const MAX_XDS_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Largest certificate request accepted: a CSR is a few KiB; anything near this is not one.
pub const MAX_CA_REQUEST_BYTES: usize = 256 * 1024;

/// How long a shutdown waits for streams to receive their final status and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything `nodetunnel-control` is told on its command line.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// The mesh description (YAML, `LOCAL_XDS_PATH` shape); watched for changes.
    pub mesh_file: PathBuf,
    /// xDS + CA over TLS.
    pub listen: SocketAddr,
    /// Plain-HTTP status listener.
    pub status_addr: SocketAddr,
    /// Plug-in CA files; generated into it when it is empty or missing. `None`: a throwaway CA.
    pub ca_dir: Option<PathBuf>,
    /// Where to write the root certificate PEM for the tunnels' `XDS_ROOT_CA` / `CA_ROOT_CA`.
    pub write_root: Option<PathBuf>,
    /// DNS names / IPs for the serving certificate; empty means [`DEFAULT_TLS_SANS`]. The listen
    /// IP is added when it is a specific address.
    pub tls_sans: Vec<String>,
    /// Bearer tokens accepted from tunnels; `None` accepts only client certificates.
    pub token_file: Option<PathBuf>,
    /// Upper bound on the lifetime of issued workload certificates.
    pub max_cert_ttl: Duration,
    pub trust_domain: String,
    pub cluster_id: String,
    /// Caps, deadlines and PINGs on the gRPC port.
    pub grpc_bounds: GrpcBounds,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the mesh file: {0}")]
    Mesh(#[from] WatchError),
    #[error("--token-file: {0}")]
    Tokens(#[from] auth::TokensError),
    #[error("cannot load the CA from {dir}: {source}")]
    LoadCa { dir: PathBuf, source: CaError },
    #[error("cannot create a CA: {0}")]
    GenerateCa(CaError),
    #[error("cannot write the new CA into {dir}: {source}")]
    WriteCa { dir: PathBuf, source: CaError },
    #[error("cannot read the CA directory {dir}: {source}")]
    ReadCaDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the root certificate to {path} (--write-root): {source}")]
    WriteRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot issue the serving certificate for {sans:?}: {source}")]
    ServingCert { sans: Vec<String>, source: CaError },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup for the gRPC listener failed: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("the gRPC server failed: {0}")]
    Serve(String),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Runs the control plane until SIGTERM or SIGINT.
pub async fn run(opts: ControlOptions) -> Result<(), ControlError> {
    // First, so a SIGTERM while the mesh file and the CA load is queued, not fatal.
    let shutdown_signal = signal::shutdown().map_err(ControlError::Signal)?;
    let defaults = Defaults {
        trust_domain: opts.trust_domain.clone(),
        cluster_id: opts.cluster_id.clone(),
    };
    let watcher = MeshWatcher::start(opts.mesh_file.clone(), defaults).await?;
    let auth = Arc::new(Authenticator::new(opts.token_file.clone(), true));
    // Later edits that break it refuse token callers until fixed; at start-up it is fatal.
    auth.check_token_file()?;
    let ca = Arc::new(load_or_create_ca(&opts)?);
    if let Some(path) = &opts.write_root {
        write_root(&ca, path)?;
    }
    let sans = serving_sans(&opts);
    let serving = ca
        .issue_serving_cert(&sans, SERVING_CERT_TTL)
        .map_err(|source| ControlError::ServingCert {
            sans: sans.clone(),
            source,
        })?;
    let tls =
        grpc_listener::tls_acceptor(&serving.cert_chain_pem, &serving.key_pem, &ca.root_pem())?;

    let grpc = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ControlError::Bind {
            what: "xDS and CA (gRPC)",
            addr: opts.listen,
            source,
        })?;
    let grpc_addr = grpc.local_addr().unwrap_or(opts.listen);
    let status_listener = TcpListener::bind(opts.status_addr)
        .await
        .map_err(|source| ControlError::Bind {
            what: "the status endpoints",
            addr: opts.status_addr,
            source,
        })?;
    let status_addr = status_listener.local_addr().unwrap_or(opts.status_addr);

    let connections = Arc::new(Connections::default());
    let shutdown = CancellationToken::new();
    let ads = AdsServer::new(
        watcher.subscribe(),
        auth.clone(),
        connections.clone(),
        shutdown.clone(),
        StreamLimits::default(),
    );
    let (serving, serving_flag) = tokio::sync::watch::channel(false);
    let status = Arc::new(StatusState {
        readiness: Readiness::new().require(
            serving_flag,
            "the xDS and CA server is not serving (starting up or shutting down)",
        ),
        connections,
        meshes: watcher.subscribe(),
        load: watcher.status_handle(),
    });
    let status_task = tokio::spawn(status::serve(status_listener, status.clone()));

    let bounds = opts.grpc_bounds;
    // TLS is `grpc_listener`'s (under the handshake deadline); these bound what a connection
    // may ask of the server once it speaks HTTP/2.
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(bounds.ping_interval))
        .http2_keepalive_timeout(Some(bounds.ping_timeout))
        .max_concurrent_streams(grpc_listener::MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(grpc_listener::MAX_HEADER_LIST_BYTES)
        .max_frame_size(grpc_listener::MAX_FRAME_BYTES);
    let meshes = watcher.subscribe();
    // Read per request from the watcher's latest mesh, so moves and removals apply at once.
    let placement: Placement = Arc::new(move |id| meshes.borrow().mesh.nodes_running(id).cloned());
    let ca_service = CaService::new(ca.clone(), auth.clone(), placement, opts.max_cert_ttl);
    let router = server
        .add_service(
            AggregatedDiscoveryServiceServer::new(ads)
                .max_decoding_message_size(MAX_XDS_REQUEST_BYTES),
        )
        .add_service(
            IstioCertificateServiceServer::new(ca_service)
                .max_decoding_message_size(MAX_CA_REQUEST_BYTES),
        );
    let incoming = Incoming::new(grpc, tls, bounds);
    // Two steps on shutdown: first every xDS stream ends with UNAVAILABLE (they never end by
    // themselves), then the server stops accepting and waits for those last messages to flush.
    let stop_server = CancellationToken::new();
    let mut serving_task = tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, stop_server.clone().cancelled_owned()),
    );

    serving.send_replace(true);
    tracing::info!(
        status = %status_addr,
        sans = ?sans,
        "nodetunnel-control serving xDS and CA on {grpc_addr}"
    );

    tokio::select! {
        signal = shutdown_signal => tracing::info!("{signal} received"),
        served = &mut serving_task => return served_outcome(served),
    };
    serving.send_replace(false);
    tracing::info!("nodetunnel-control shutting down");
    shutdown.cancel();
    stop_server.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving_task).await {
        Ok(served) => served_outcome(served)?,
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
            serving_task.abort();
        }
    }
    status_task.abort();
    drop(watcher);
    Ok(())
}

/// `--ca-dir` with files: load them. `--ca-dir` empty or missing: generate and persist there,
/// so a restart keeps the root the tunnels trust. No `--ca-dir`: a throwaway root.
fn load_or_create_ca(opts: &ControlOptions) -> Result<LocalCa, ControlError> {
    let Some(dir) = &opts.ca_dir else {
        tracing::info!(
            trust_domain = %opts.trust_domain,
            "no --ca-dir: generated a throwaway root CA (use --write-root to hand it to tunnels)"
        );
        return LocalCa::generate(&opts.trust_domain).map_err(ControlError::GenerateCa);
    };
    if dir_is_empty(dir)? {
        let ca = LocalCa::generate(&opts.trust_domain).map_err(ControlError::GenerateCa)?;
        ca.write(dir).map_err(|source| ControlError::WriteCa {
            dir: dir.clone(),
            source,
        })?;
        tracing::info!(dir = %dir.display(), "generated a new root CA into the empty --ca-dir");
        return Ok(ca);
    }
    // Plug-in files do not say which trust domain they serve; the CA then refuses identities
    // outside --trust-domain.
    let ca = LocalCa::load(dir)
        .map_err(|source| ControlError::LoadCa {
            dir: dir.clone(),
            source,
        })?
        .with_trust_domain(opts.trust_domain.clone());
    tracing::info!(dir = %dir.display(), "loaded the plug-in CA");
    Ok(ca)
}

pub(crate) fn dir_is_empty(dir: &Path) -> Result<bool, ControlError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(ControlError::ReadCaDir {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

fn write_root(ca: &LocalCa, path: &Path) -> Result<(), ControlError> {
    let err = |source| ControlError::WriteRoot {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // Replaced, not rewritten: a tunnel starting at the same moment never reads half a PEM,
    // and a symlink at the path is never followed.
    nodetunnel_base::files::replace(path, ca.root_pem().as_bytes(), 0o644).map_err(err)?;
    tracing::info!(path = %path.display(), "wrote the root certificate ({ROOT_CERT_FILE})");
    Ok(())
}

/// `--tls-san` values (or the defaults), plus the listen IP when it is a specific address.
pub(crate) fn serving_sans(opts: &ControlOptions) -> Vec<String> {
    let mut sans: Vec<String> = if opts.tls_sans.is_empty() {
        DEFAULT_TLS_SANS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.tls_sans.clone()
    };
    let ip: IpAddr = opts.listen.ip();
    if !ip.is_unspecified() && !sans.contains(&ip.to_string()) {
        sans.push(ip.to_string());
    }
    sans
}

fn served_outcome(
    served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ControlError> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ControlError::Serve(nodetunnel::grpc::error_chain(&e))),
        Err(e) => Err(ControlError::Serve(e.to_string())),
    }
}
