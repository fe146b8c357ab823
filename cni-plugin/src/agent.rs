//! The CNI node agent (`nodetunnel-cni-agent`, one per node, a DaemonSet): installs the plugin
//! into the host's CNI config, watches Namespaces and this node's Pods, and enrolls ambient
//! pods into the node tunnel: in-pod redirection rules, host probe SNAT, ZDS hand-over of the
//! pod's netns, and the `ambient.istio.io/redirection` annotation.
//!
//! - `config`: flags and Istio's environment variables.
//! - `watch`: the Kubernetes watches; `reconcile`: the single task deciding enrollment;
//!   `enroll`: the steps of enrolling and unenrolling one pod.
//! - `host_mounts`: host paths (a pod's netns from the plugin) under the agent's host mount.
//! - `check`: `--check-config`, the settings checked and reported without starting.
//! - `plugin_server`: `POST /cmdadd` from the plugin; `health`: `/healthz`, `/readyz`;
//!   `metrics`: `/metrics` on the chart's port 15014.

mod add_checks;
mod check;
mod config;
mod enroll;
mod health;
mod host_mounts;
mod http_server;
mod metrics;
mod plugin_server;
mod reconcile;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::Client;
use nodetunnel_zds::agent::{AgentEvent, ZdsAgent};
use nodetunnel_zds::server::{ZdsServer, ZdsServerError, ACK_TIMEOUT};
use tokio::sync::mpsc;

use crate::ambient::{EnablementSelector, EnrollmentRules};
use crate::install::{upgrade, InstallConfig, Installer, ShutdownAction};
use crate::node::host_rules::{HostProbeSnat, HostRulesError};
use crate::plugin::config::PluginConfig;
pub use check::{setting_variables, PROCESS_VARIABLES};
use config::{AgentConfig, PLUGIN_TYPE};
use enroll::Enroller;
use reconcile::{Input, Reconciler};

/// How often pods that could not be enrolled yet are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("NATIVE_NFTABLES=true: this agent programs iptables only; unset it")]
    Nftables,
    #[error("Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    KubeClient(#[from] kube::Error),
    #[error("host probe SNAT rules: {0}")]
    HostRules(#[from] HostRulesError),
    #[error("ZDS socket {}: {source}", path.display())]
    Zds {
        path: PathBuf,
        #[source]
        source: ZdsServerError,
    },
    #[error("creating {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin event server: {0}")]
    EventServer(#[from] plugin_server::EventServerError),
    #[error("health server on {addr}: {source}")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("metrics server on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("enablement selectors: {0}")]
    Selectors(#[from] crate::ambient::SelectorError),
    #[error("install: {0}")]
    Install(#[from] crate::install::InstallError),
    #[error("installing the SIGTERM/SIGINT handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the node agent; returns the exit code.
pub fn main() -> i32 {
    let config = match AgentConfig::try_parse() {
        Ok(config) => config,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { 2 } else { 0 };
        }
    };
    nodetunnel_base::logging::init(Some(config.log_filter()));
    if config.check_config {
        return check_config(&config);
    }
    for note in config.notes() {
        tracing::info!("{note}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "starting the runtime");
            return 1;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("{error}");
            1
        }
    }
}

/// `--check-config`: the report on stdout, or the error start-up would stop with.
fn check_config(config: &AgentConfig) -> i32 {
    match check::check(config, std::env::vars().map(|(name, _)| name)) {
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

/// The agent until SIGTERM/SIGINT.
pub(crate) async fn run(config: AgentConfig) -> Result<(), AgentError> {
    if config.native_nftables {
        return Err(AgentError::Nftables);
    }
    config.check()?;
    let selectors = config.enablement_selectors()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let shutdown = nodetunnel_base::signal::shutdown().map_err(AgentError::Signal)?;
    let kube_config = kube::Config::infer().await?;
    let client = Client::try_from(kube_config.clone())?;
    let installer = Arc::new(
        Installer::new(install_config(&config, &selectors)).with_pass_observer({
            let metrics = metrics.clone();
            Arc::new(move |pass| metrics.on_install_pass(pass))
        }),
    );
    let mut tasks = tokio::task::JoinSet::new();

    // Enrollment first, so the event socket exists before the plugin is installed: a pod
    // created right after install must find the agent.
    let (inputs, inputs_rx) = mpsc::channel(256);
    let stop = inputs.clone();
    let mut event_socket = None;
    // Without ambient there is nothing to sync: ready as soon as installed.
    let (synced_tx, synced) = tokio::sync::watch::channel(!config.ambient_enabled);
    let reconciler = if config.ambient_enabled {
        let host_netns = config.host_netns();
        if let Some(path) = &host_netns {
            tracing::info!(netns = %path.display(), "host rules go into the host's network namespace");
        }
        let ipv6 = config.ambient_ipv6;
        let host = tokio::task::spawn_blocking(move || {
            HostProbeSnat::ensure_in(host_netns.as_deref(), ipv6)
        })
        .await??;
        // Tunnels are served only once the first listing is reconciled (see start_zds).
        let mut gate = synced.clone();
        let zds = start_zds(&config, metrics.clone(), inputs.clone(), async move {
            // Never on a dropped sender (the reconciler died or the agent stops before its
            // first sync): a snapshot from before the sync would drain the tunnel's pods.
            if gate.wait_for(|synced| *synced).await.is_err() {
                std::future::pending::<()>().await;
            }
        })?;
        let enroller = Enroller::new(zds, host, client.clone(), config.ambient_dns_capture);
        let reconciler = Reconciler::new(
            EnrollmentRules::new(
                config.exclude_namespaces.clone(),
                config.pod_namespace.clone(),
                &selectors,
            )?
            .with_agent_pod_prefix(format!("{}-", config.daemonset_name)),
            client.clone(),
            reconcile::ThisNode {
                name: config.node_name.clone(),
                proc_root: config.proc_root(),
                host: host_mounts::HostMounts::new(config.host_mounts_path.clone()),
            },
            enroller,
            synced_tx,
            metrics.clone(),
        );
        tasks.spawn(plugin_server::bind(
            &config.event_socket(),
            inputs.clone(),
            metrics.clone(),
        )?);
        event_socket = Some((config.event_socket(), file_id(&config.event_socket())));
        tasks.spawn(watch::namespaces(client.clone(), inputs.clone()));
        tasks.spawn(watch::pods(
            client.clone(),
            config.node_name.clone(),
            inputs.clone(),
        ));
        tasks.spawn(tick(inputs.clone(), RETRY_EVERY, || Input::Retry));
        tasks.spawn(tick(inputs.clone(), config.reconcile_interval, || {
            Input::Protect
        }));
        Some(tokio::spawn(reconciler.run(inputs_rx)))
    } else {
        None
    };
    let readiness = health::readiness(installer.ready(), synced);
    drop(inputs);
    let health = health::serve(config.health_addr, readiness.clone())
        .await
        .map_err(|source| AgentError::Health {
            addr: config.health_addr,
            source,
        })?;
    tasks.spawn(health);
    let served = metrics::serve(config.metrics_addr(), metrics, installer.ready())
        .await
        .map_err(|source| AgentError::Metrics {
            addr: config.metrics_addr(),
            source,
        })?;
    tasks.spawn(served);

    let (stop_keeper, keeper_stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = {
        let installer = installer.clone();
        let kube_config = kube_config.clone();
        tokio::spawn(async move {
            // A failed first pass (say, an unwritable directory) is retried by the keeper.
            if let Err(error) = installer.install(&kube_config).await {
                tracing::warn!(%error, "installing the CNI plugin; will retry");
            }
            installer.keep_installed(keeper_stopped).await;
        })
    };

    let signal = shutdown.await;
    tracing::info!(%signal, "shutting down");
    let _ = stop_keeper.send(());
    let _ = keeper.await;
    tasks.shutdown().await;
    // Event-server connections may still hold senders, so the reconciler is told to stop.
    let _ = stop.send(Input::Stop).await;
    let enroller = match reconciler {
        Some(reconciler) => match reconciler.await {
            Ok(enroller) => Some(enroller),
            Err(error) => {
                tracing::warn!(%error, "the reconciler task failed");
                None
            }
        },
        None => None,
    };
    if let Some((path, id)) = event_socket {
        remove_if_ours(&path, id);
    }
    let action = if config.ambient_disable_safe_upgrade {
        ShutdownAction::Uninstall
    } else {
        upgrade::shutdown_action(client, &config.pod_namespace, &config.daemonset_name).await
    };
    if action == ShutdownAction::Uninstall {
        installer.uninstall()?;
        if let Some(enroller) = &enroller {
            let host = enroller.host().clone();
            tokio::task::spawn_blocking(move || host.uninstall()).await??;
        }
        tracing::info!("CNI plugin and host probe rules uninstalled");
    } else {
        tracing::info!("leaving the CNI plugin installed for the next agent (upgrade or restart)");
    }
    if let Some(enroller) = enroller {
        enroller.shutdown().await;
    }
    Ok(())
}

/// (st_dev, st_ino) of a file, if it exists.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket we bound, unless a newer agent (overlapping during an update) has
/// bound the path since.
fn remove_if_ours(path: &std::path::Path, id: Option<(u64, u64)>) {
    if id.is_some() && file_id(path) == id {
        let _ = std::fs::remove_file(path);
    }
}

/// Sends `input()` to the reconciler every `every`, until it stops.
async fn tick(inputs: mpsc::Sender<Input>, every: Duration, input: fn() -> Input) {
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if inputs.send(input()).await.is_err() {
            return;
        }
    }
}

/// Binds the ZDS socket; tunnels are accepted once `synced` completes. Until the agent knows
/// which pods are enrolled (after a restart: found again under /proc), a tunnel that
/// reconnects would get an empty snapshot and drain every pod of the node.
fn start_zds(
    config: &AgentConfig,
    metrics: Arc<metrics::Metrics>,
    inputs: mpsc::Sender<Input>,
    synced: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ZdsAgent, AgentError> {
    let path = &config.ztunnel_uds_address;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let server = ZdsServer::bind(path).map_err(|source| AgentError::Zds {
        path: path.clone(),
        source,
    })?;
    let (zds, mut events) = ZdsAgent::start_when(server, ACK_TIMEOUT, synced);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            metrics.on_zds(&event);
            log_zds_event(&event);
            // A tunnel came or went: check every pod now rather than at the next tick (a
            // full channel means a pass is coming anyway).
            if matches!(
                event,
                AgentEvent::SnapshotSent { .. } | AgentEvent::Disconnected { .. }
            ) {
                let _ = inputs.try_send(Input::Protect);
            }
        }
    });
    Ok(zds)
}

fn log_zds_event(event: &AgentEvent) {
    for line in nodetunnel_zds::agent::lines::render(event) {
        tracing::info!(target: "zds", "{line}");
    }
}

/// What the installer writes: the plugin binary, its kubeconfig and its conflist entry.
fn install_config(config: &AgentConfig, selectors: &[EnablementSelector]) -> InstallConfig {
    let plugin = PluginConfig {
        cni_version: String::new(),
        name: String::new(),
        plugin_type: PLUGIN_TYPE.into(),
        plugin_log_level: "info".into(),
        cni_agent_run_dir: config.run_dir.clone(),
        ambient_enabled: config.ambient_enabled,
        // The plugin decides with the same selectors as the agent.
        enablement_selectors: Some(
            selectors
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect(),
        ),
        exclude_namespaces: config.exclude_namespaces.clone(),
        pod_namespace: config.pod_namespace.clone(),
        native_nftables: false,
    };
    let mut entry = serde_json::to_value(&plugin).unwrap_or_default();
    if let Some(map) = entry.as_object_mut() {
        // The conflist's own version applies.
        map.remove("cniVersion");
    }
    let plugin_source = config.plugin_binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(PLUGIN_TYPE)))
            .unwrap_or_else(|| PathBuf::from("/opt/cni/bin").join(PLUGIN_TYPE))
    });
    InstallConfig {
        cni_net_dir: config.mounted_cni_net_dir.clone(),
        cni_bin_dir: config.host_cni_bin_dir.clone(),
        plugin_source,
        plugin_type: PLUGIN_TYPE.into(),
        conf_name: config.cni_conf_name.clone(),
        kubeconfig_path: config.plugin_kubeconfig(),
        entry,
    }
}
