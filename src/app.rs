//! Wiring: load config and certificates, bind the listeners, serve until a shutdown signal,
//! then drain. Everything that can fail on bad input fails here, before the tunnel reports
//! ready, so it never runs half-configured.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::admin::{self, AdminState, Endpoint};
use crate::config::{CaSource, Config, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::drain::ConnectionTasks;
use crate::hbone::pool::Pool;
use crate::identity::manager::CertificateSource;
use crate::identity::{CaError, LocalCa, ManagerError, SecretManager};
use crate::inpod::manager::{InpodManager, PodTable};
use crate::inpod::pod::PodContext;
use crate::metrics::Metrics;
use crate::proxy::{inbound, inbound_plain, outbound, Delivery, ProxyInputs, Scope};
use crate::socket::{SocketFactory, TUNNEL_MARK};
use crate::state::{self, Defaults, LoadError, StateHandle};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("config file: {0}")]
    Config(#[from] LoadError),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("certificate for {identity}: {source}")]
    Certificate {
        identity: String,
        source: Box<ManagerError>,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    AdminThread(std::io::Error),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// Runs the tunnel until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), AppError> {
    let config = Arc::new(config);
    let defaults = Defaults {
        trust_domain: config.trust_domain.clone(),
        cluster_id: config.cluster_id.clone(),
    };
    let path = config
        .local_xds_path
        .clone()
        .expect("Config::from_env requires a config source");
    let loaded = state::load_file(&path, &defaults)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let state = StateHandle::new(loaded.store);

    let ca = match &config.ca {
        CaSource::Fake => LocalCa::generate(&config.trust_domain)?,
        CaSource::LocalDir(dir) => LocalCa::load(dir)?,
    };
    let certs = SecretManager::new(CertificateSource::Local(Arc::new(ca)), config.secret_ttl);
    // Renew cached certificates ahead of expiry even when no new connection asks for them.
    let _renewal = certs.spawn_renewal();
    let scope = Scope {
        node: config.node_name.clone(),
        workload: config.proxy_workload_info.clone(),
    };
    // Dedicated mode: issue the local workloads' certificates now, so a broken CA shows up at
    // start, not on the first connection. Shared mode issues them as pods arrive.
    let local_identities: std::collections::BTreeSet<_> = state
        .read()
        .workloads()
        .filter(|w| config.inpod.is_none() && scope.serves(w))
        .map(|w| w.identity())
        .collect();
    for identity in &local_identities {
        certs
            .fetch(identity)
            .await
            .map_err(|source| AppError::Certificate {
                identity: identity.to_string(),
                source: Box::new(source),
            })?;
    }
    tracing::info!(
        config = %path.display(),
        workloads = state.read().workloads().count(),
        local_workloads = state.read().workloads().filter(|w| scope.serves(w)).count(),
        identities = local_identities.len(),
        node = config.node_name.as_deref().unwrap_or("-"),
        "mesh state loaded"
    );

    let metrics = Arc::new(Metrics::new());
    let admin = Arc::new(AdminState {
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
        state: state.clone(),
        certs: certs.clone(),
        pods: PodTable::default(),
    });
    start_admin_thread(&config, admin.clone())?;

    match &config.inpod {
        None => {
            let pi = Arc::new(ProxyInputs {
                config: config.clone(),
                state,
                certs,
                pool: Pool::new(config.pool.clone()),
                sockets: SocketFactory::current(Some(TUNNEL_MARK)),
                metrics,
                scope,
                delivery: Delivery::KernelSource,
                tasks: ConnectionTasks::new(),
            });
            run_dedicated(pi, &admin).await
        }
        Some(inpod) => {
            let ctx = PodContext {
                config: config.clone(),
                state,
                certs,
                metrics,
                mark: inpod.mark,
                port_reuse: inpod.port_reuse,
            };
            let ready = admin.clone();
            let manager = InpodManager::new(
                ctx,
                inpod.uds.clone(),
                config.drain_timeout,
                Arc::new(move |r| ready.set_ready(r)),
                admin.pods.clone(),
            );
            tracing::info!(uds = %inpod.uds.display(), "shared mode: waiting for pods from the node agent");
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(manager.run(async move {
                let _ = stop_rx.await;
            }));
            let signal = wait_for_shutdown_signal().await;
            admin.set_ready(false);
            let _ = stop_tx.send(());
            let _ = serving.await;
            signal
        }
    }
}

/// Dedicated mode: the tunnel's own namespace holds the listeners.
async fn run_dedicated(pi: Arc<ProxyInputs>, admin: &AdminState) -> Result<(), AppError> {
    let listeners = SocketFactory::current(None);
    let bind = |port: u16, what: &'static str| {
        let addr = SocketAddr::new(pi.config.bind_ip, port);
        listeners
            .listen(addr)
            .map_err(|source| AppError::Bind { addr, what, source })
    };
    let outbound_listener = bind(OUTBOUND_PORT, "outbound capture")?;
    let plaintext_listener = bind(INBOUND_PLAINTEXT_PORT, "inbound plaintext")?;
    let hbone_listener = bind(HBONE_PORT, "inbound HBONE")?;
    let tasks = [
        tokio::spawn(outbound::run(pi.clone(), outbound_listener)),
        tokio::spawn(inbound_plain::run(pi.clone(), plaintext_listener)),
        tokio::spawn(inbound::run(pi.clone(), hbone_listener)),
    ];
    admin.set_ready(true);
    tracing::info!("ready: outbound :{OUTBOUND_PORT}, inbound plaintext :{INBOUND_PLAINTEXT_PORT}, HBONE :{HBONE_PORT}");

    let signal = wait_for_shutdown_signal().await;
    admin.set_ready(false);
    for task in &tasks {
        task.abort();
    }
    let outcome = pi.tasks.drain(pi.config.drain_timeout).await;
    if outcome.cut > 0 {
        tracing::warn!(
            connections = outcome.cut,
            "drain timeout reached; closed the remaining connections"
        );
    }
    signal
}

async fn wait_for_shutdown_signal() -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    Ok(())
}

/// Readiness, metrics and admin run on their own thread and runtime, so a slow scrape or a
/// large config dump never competes with the data path's workers.
fn start_admin_thread(config: &Config, admin: Arc<AdminState>) -> Result<(), AppError> {
    let mut bound = Vec::new();
    for (addr, endpoint, what) in [
        (config.readiness_addr, Endpoint::Readiness, "readiness"),
        (config.metrics_addr, Endpoint::Metrics, "metrics"),
        (config.admin_addr, Endpoint::Admin, "admin"),
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
