//! Wiring: load config and certificates, bind the listeners, serve until a shutdown signal,
//! then drain. Everything that can fail on bad input fails here, before the tunnel reports
//! ready, so it never runs half-configured.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_base::readiness::Readiness;
use nodetunnel_base::signal::{self, Signal};
use tokio::sync::watch;

use crate::admin::{self, AdminState, Endpoint};
use crate::config::{
    CaSource, Config, ConfigSource, InpodConfig, Mode, HBONE_PORT, INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
};
use crate::drain::DrainOutcome;
use crate::identity::CertificateSource;
use crate::identity::{CaClient, CaClientError, CaError, LocalCa, ManagerError, SecretManager};
use crate::inpod::manager::{InpodManager, PodTable};
use crate::inpod::pod::PodContext;
use crate::metrics::{ActivePods, Metrics};
use crate::proxy::{Delivery, ListenError, ListenerSet, ProxyInputs, Scope};
use crate::socket::{SocketFactory, TUNNEL_MARK};
use crate::state::{self, Defaults, LoadError, StateHandle};
use crate::xds::{XdsClient, XdsError, XdsHandle};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("config file: {0}")]
    Config(#[from] LoadError),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("CA client: {0}")]
    CaClient(#[from] CaClientError),
    #[error("xDS client: {0}")]
    Xds(#[from] XdsError),
    #[error("certificate for {identity}: {source}")]
    Certificate {
        identity: String,
        source: Box<ManagerError>,
    },
    #[error(transparent)]
    Listeners(#[from] ListenError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the xDS thread: {0}")]
    XdsThread(std::io::Error),
    #[error("cannot start the admin thread: {0}")]
    AdminThread(std::io::Error),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// How often a tunnel that is still waiting (for the control plane or the CA) says why.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the tunnel until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), AppError> {
    let config = Arc::new(config);
    let mut shutdown = Box::pin(signal::shutdown().map_err(AppError::Signal)?);
    let defaults = Defaults {
        trust_domain: config.trust_domain.clone(),
        cluster_id: config.cluster_id.clone(),
    };
    let state = StateHandle::default();
    let xds = match &config.source {
        ConfigSource::File(path) => {
            let loaded = state::load_file(path, &defaults)?;
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            state.replace(loaded.store);
            tracing::info!(config = %path.display(), workloads = state.read().workloads().count(), "mesh state loaded from file");
            None
        }
        ConfigSource::Xds(xds) => {
            let (client, handle) = XdsClient::new((**xds).clone(), state.clone(), defaults)?;
            tracing::info!(address = %xds.target.address, node_id = %xds.node.node_id(), "mesh state from the control plane (delta xDS)");
            // Its own thread and runtime: applying a large push (100k workloads) is seconds
            // of CPU that must not sit on the data path's workers.
            std::thread::Builder::new()
                .name("xds".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(client.run()),
                        Err(e) => tracing::error!(error = %e, "the xDS runtime failed to start"),
                    }
                })
                .map_err(AppError::XdsThread)?;
            Some(handle)
        }
    };

    let certs = SecretManager::new(certificate_source(&config)?, config.ca.secret_ttl);
    // Renew cached certificates ahead of expiry even when no new connection asks for them.
    let _renewal = certs.spawn_renewal();
    // Shared mode scopes each pod by itself; this scope is the dedicated tunnel's.
    let scope = Scope {
        node: config.node_name.clone(),
        workload: match &config.mode {
            Mode::Dedicated { workload } => workload.clone(),
            Mode::Shared(_) => None,
        },
    };

    let metrics = Arc::new(Metrics::for_istio_version(istio_version(&config)));
    if let Some(xds) = &xds {
        metrics.register_xds(xds.clone());
    }
    metrics.register_certificates(certs.clone());
    let pods = PodTable::default();
    if let Mode::Shared(_) = &config.mode {
        let table = pods.clone();
        metrics.register_inpod(ActivePods(Box::new(move || {
            table.lock().unwrap_or_else(|e| e.into_inner()).len()
        })));
    }
    // What `/healthz/ready` waits for, in the order start-up meets them: each gate's flag is
    // set by the step that passes it.
    let mut readiness = Readiness::new();
    if let Some(xds) = &xds {
        readiness = readiness.require(xds.synced(), "waiting for the initial xDS sync");
    }
    let gates = match &config.mode {
        Mode::Dedicated { .. } => ModeGates::Dedicated {
            certificates: readiness.condition("waiting for the local workloads' certificates"),
            listeners: readiness.condition("listeners not bound"),
        },
        Mode::Shared(inpod) => ModeGates::Shared {
            inpod,
            snapshot: readiness.condition("waiting for the node agent's snapshot"),
        },
    };
    let mut admin = AdminState::new(
        readiness,
        metrics.clone(),
        state.clone(),
        certs.clone(),
        pods,
        xds.clone(),
        config.network.clone(),
    );
    if let Mode::Dedicated { .. } = &config.mode {
        admin = admin.with_local_scope(scope.clone());
    }
    let admin = Arc::new(admin);
    start_admin_thread(&config, admin.clone())?;

    if let Some(xds) = &xds {
        tokio::select! {
            signal = &mut shutdown => return stopped_starting(signal),
            () = wait_for_sync(xds) => {}
        }
    }
    // Dedicated mode: issue the local workloads' certificates now, so a broken CA shows up at
    // start, not on the first connection. Shared mode issues them as pods arrive.
    if let ModeGates::Dedicated { certificates, .. } = &gates {
        tokio::select! {
            signal = &mut shutdown => return stopped_starting(signal),
            result = prefetch_local_certificates(&config, &state, &scope, &certs) => result?,
        }
        certificates.send_replace(true);
    }
    tracing::info!(
        workloads = state.read().workloads().count(),
        local_workloads = state.read().workloads().filter(|w| scope.serves(w)).count(),
        node = config.node_name.as_deref().unwrap_or("-"),
        "mesh state ready"
    );

    match gates {
        ModeGates::Dedicated { listeners, .. } => {
            let pi = Arc::new(ProxyInputs::new(
                config.clone(),
                state,
                certs,
                SocketFactory::current(Some(TUNNEL_MARK)),
                metrics,
                scope,
                Delivery::KernelSource,
            ));
            run_dedicated(pi, &admin, listeners, shutdown).await
        }
        ModeGates::Shared { inpod, snapshot } => {
            let ctx = PodContext {
                config: config.clone(),
                state,
                certs,
                metrics,
                inpod: inpod.clone(),
            };
            run_shared(ctx, &admin, snapshot, shutdown).await
        }
    }
}

fn certificate_source(config: &Config) -> Result<CertificateSource, AppError> {
    Ok(match &config.ca.source {
        CaSource::Fake => {
            tracing::warn!("{}", crate::identity::TEST_ROOT_WARNING);
            CertificateSource::Local(Arc::new(LocalCa::test_root(&config.trust_domain)?))
        }
        CaSource::LocalDir(dir) => CertificateSource::Local(Arc::new(LocalCa::load(dir)?)),
        CaSource::Remote(target) => {
            tracing::info!(address = %target.address, "certificates from the CA over gRPC");
            CertificateSource::Remote(Arc::new(CaClient::new(target.clone())?))
        }
    })
}

/// Returns once the control plane delivered a first full state (both resource types), saying
/// every few seconds what it is waiting on.
async fn wait_for_sync(xds: &XdsHandle) {
    let mut synced = xds.synced();
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(WAITING_LOG_INTERVAL, synced.wait_for(|s| *s)).await {
            Ok(_) => {
                tracing::info!(after = ?started.elapsed(), "initial xDS sync complete");
                return;
            }
            Err(_) => tracing::warn!(
                waited = ?started.elapsed(),
                reason = xds.last_error().as_deref().unwrap_or("no response yet"),
                "not ready: waiting for the initial xDS sync"
            ),
        }
    }
}

/// Issues the certificates of the workloads this dedicated tunnel serves. A local CA that
/// cannot sign is a configuration error (fail now); a remote CA may just not be up yet, so
/// those failures are logged and retried (the manager paces retries with backoff) until it is.
async fn prefetch_local_certificates(
    config: &Config,
    state: &StateHandle,
    scope: &Scope,
    certs: &SecretManager,
) -> Result<(), AppError> {
    let identities: std::collections::BTreeSet<_> = state
        .read()
        .workloads()
        // A host-network workload is never found by address (its IP is its node's), so no
        // connection ever uses its certificate: waiting for one would hold readiness hostage
        // to pods outside the mesh (istiod lists kube-proxy and friends on every node).
        .filter(|w| scope.serves(w) && !w.host_network)
        .map(|w| w.identity())
        .collect();
    let retry = matches!(config.ca.source, CaSource::Remote(_));
    for identity in &identities {
        let mut last_log: Option<std::time::Instant> = None;
        loop {
            match certs.fetch(identity).await {
                Ok(_) => break,
                Err(error) if retry => {
                    if last_log.is_none_or(|t| t.elapsed() >= WAITING_LOG_INTERVAL) {
                        tracing::warn!(%identity, %error, "not ready: no certificate yet; retrying");
                        last_log = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(source) => {
                    return Err(AppError::Certificate {
                        identity: identity.to_string(),
                        source: Box::new(source),
                    })
                }
            }
        }
    }
    Ok(())
}

/// The readiness gates that depend on the mode, each set by the step that passes it.
enum ModeGates<'a> {
    Dedicated {
        /// The served workloads' certificates were issued.
        certificates: watch::Sender<bool>,
        /// The listener set is bound and serving.
        listeners: watch::Sender<bool>,
    },
    Shared {
        inpod: &'a InpodConfig,
        /// The node agent's snapshot was applied on the current connection (the manager's).
        snapshot: watch::Sender<bool>,
    },
}

/// A shutdown signal before the tunnel served: nothing to drain, a clean exit.
fn stopped_starting(signal: Signal) -> Result<(), AppError> {
    tracing::info!("{signal} during start-up: exiting");
    Ok(())
}

/// Dedicated mode: the tunnel's own namespace holds the listeners.
async fn run_dedicated(
    pi: Arc<ProxyInputs>,
    admin: &AdminState,
    listening: watch::Sender<bool>,
    shutdown: impl Future<Output = Signal>,
) -> Result<(), AppError> {
    let drain_timeout = pi.config.drain_timeout;
    // Listeners carry no mark (only upstream sockets must bypass the capture rules).
    let listeners = ListenerSet::start(pi, &SocketFactory::current(None)).await?;
    listening.send_replace(true);
    tracing::info!("ready: outbound :{OUTBOUND_PORT}, inbound plaintext :{INBOUND_PLAINTEXT_PORT}, HBONE :{HBONE_PORT}");

    let signal = shutdown.await;
    tracing::info!(deadline = ?drain_timeout, "{signal}: draining");
    admin.start_draining();
    let outcome = listeners.drain(drain_timeout).await;
    log_drained(outcome);
    Ok(())
}

/// The last line a tunnel logs: how its drain ended. `cut` counts the connection tasks still
/// running at the deadline (an HBONE connection and each of its streams count apart); zero
/// means every connection finished on its own. Upgrade tests read it from the old process.
fn log_drained(outcome: DrainOutcome) {
    if outcome.cut > 0 {
        tracing::warn!(
            cut = outcome.cut,
            "drained: the deadline cut the remaining connections; exiting"
        );
    } else {
        tracing::info!(cut = 0, "drained: every connection finished; exiting");
    }
}

/// Shared mode: pods arrive from the node agent, each served by its own listener set.
async fn run_shared(
    ctx: PodContext,
    admin: &AdminState,
    snapshot: watch::Sender<bool>,
    shutdown: impl Future<Output = Signal>,
) -> Result<(), AppError> {
    tracing::info!(uds = %ctx.inpod.uds.display(), "shared mode: waiting for pods from the node agent");
    let drain_timeout = ctx.config.drain_timeout;
    let manager = InpodManager::new(ctx, snapshot, admin.pods.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(manager.run(async move {
        let _ = stop_rx.await;
    }));
    let signal = shutdown.await;
    tracing::info!(deadline = ?drain_timeout, "{signal}: draining every pod");
    admin.start_draining();
    let _ = stop_tx.send(());
    // A manager that panicked has no count to give: say so rather than claim a clean drain.
    match serving.await {
        Ok(outcome) => log_drained(outcome),
        Err(error) => tracing::error!(%error, "the pod manager failed while draining; exiting"),
    }
    Ok(())
}

/// Readiness, metrics and admin run on their own thread and runtime, so a slow scrape or a
/// large config dump never competes with the data path's workers.
fn start_admin_thread(config: &Config, admin: Arc<AdminState>) -> Result<(), AppError> {
    let mut bound = Vec::new();
    for (addr, endpoint, what) in [
        (
            config.listen.readiness_addr,
            Endpoint::Readiness,
            "readiness",
        ),
        (config.listen.metrics_addr, Endpoint::Metrics, "metrics"),
        (config.listen.admin_addr, Endpoint::Admin, "admin"),
    ] {
        let listener = SocketFactory::current(None)
            .listen(addr)
            .map_err(|source| AppError::Bind { addr, what, source })?
            .into_std()
            .map_err(|source| AppError::Bind { addr, what, source })?;
        bound.push((listener, endpoint));
    }
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (listener, endpoint) in bound {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => tasks.push(tokio::spawn(admin::serve(l, endpoint, admin.clone()))),
                        Err(e) => tracing::error!(error = %e, ?endpoint, "admin listener unusable"),
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
        .map_err(AppError::AdminThread)?;
    Ok(())
}

/// The Istio release this tunnel stands in for, for `istio_build` and `/config_dump`:
/// `ISTIO_META_ISTIO_VERSION`, the variable ztunnel reads, which the xDS config keeps (as every
/// `ISTIO_META_*`) in the node metadata as `ISTIO_VERSION`. With a local config: none.
fn istio_version(config: &Config) -> Option<&str> {
    match &config.source {
        ConfigSource::Xds(xds) => xds
            .node
            .extra_metadata
            .get("ISTIO_VERSION")
            .map(String::as_str),
        ConfigSource::File(_) => None,
    }
}
