//! The agent's install step (Istio's `install-cni`): the plugin binary in the host CNI bin
//! dir, a kubeconfig for it in the run dir, and its entry last in the chain of the primary
//! CNI config, kept in place while the agent runs.
//!
//! - [`conflist`]: pure JSON edits (insert our entry last, wrap a single config, remove).
//! - [`files`]: which file is the primary config; atomic replacement of files.
//! - [`binary`]: the plugin binary copy.
//! - [`kubeconfig`]: the plugin's kubeconfig from the agent's client config.
//! - [`upgrade`]: Istio's rule for "upgrade, leave it" versus "uninstall" on shutdown.
//! - [`Installer`]: install once, keep installed (inotify + periodic), uninstall.
//!
//! Use from the agent:
//!
//! ```text
//! let installer = Installer::new(cfg);
//! installer.install(&kube_config).await?;           // may report WaitingForPrimary
//! let ready = installer.ready();                    // gate the agent's readiness on this
//! installer.keep_installed(shutdown_signal).await;  // returns when shutdown completes
//! if upgrade::shutdown_action(client, ns, "istio-cni-node").await == ShutdownAction::Uninstall {
//!     installer.uninstall()?;
//! }
//! ```

pub mod binary;
pub mod conflist;
pub mod files;
mod installer;
pub mod kubeconfig;
pub mod upgrade;
mod watch;

use std::path::PathBuf;

use thiserror::Error;

pub use binary::BinaryOutcome;
pub use installer::{Installer, PassObserver, PassResult, RECHECK_INTERVAL};
pub use upgrade::ShutdownAction;

/// Where things go and what our entry is.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// The host CNI config dir as mounted in the agent (e.g. `/host/etc/cni/net.d`).
    pub cni_net_dir: PathBuf,
    /// The host CNI bin dir as mounted in the agent (e.g. `/host/opt/cni/bin`).
    pub cni_bin_dir: PathBuf,
    /// The plugin binary shipped in the agent image (e.g. `/opt/cni/bin/nodetunnel-cni`).
    pub plugin_source: PathBuf,
    /// Our plugin's `type`, also the installed binary's file name (`nodetunnel-cni`).
    pub plugin_type: String,
    /// `CNI_CONF_NAME`: use this file in `cni_net_dir` instead of the first one by name.
    pub conf_name: Option<String>,
    /// `<run_dir>/istio-cni-kubeconfig`.
    pub kubeconfig_path: PathBuf,
    /// Our conflist entry: a serialized `PluginConfig` (its `cniVersion` is set from the list).
    pub entry: serde_json::Value,
}

/// What one install pass found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub binary: BinaryOutcome,
    /// The kubeconfig was missing or stale and has been written.
    pub kubeconfig_written: bool,
    pub conflist: ConflistState,
}

impl InstallReport {
    /// Our entry is in the primary config: the node will run the plugin for new pods.
    pub fn is_installed(&self) -> bool {
        matches!(self.conflist, ConflistState::Installed { .. })
    }

    /// The pass wrote something: the binary, the kubeconfig or the conflist.
    pub fn changed_anything(&self) -> bool {
        self.binary == BinaryOutcome::Copied
            || self.kubeconfig_written
            || matches!(
                self.conflist,
                ConflistState::Installed { changed: true, .. }
            )
    }
}

/// Where our conflist entry stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflistState {
    /// Our entry is last in `path`, the primary config.
    Installed {
        path: PathBuf,
        /// The file was written in this pass.
        changed: bool,
        /// The single config (`.conf`/`.json`) that was wrapped into `path` and removed.
        wrapped_from: Option<PathBuf>,
    },
    /// The CNI config dir has no config the runtime would load yet (the primary CNI installs
    /// later); `keep_installed` inserts our entry as soon as one appears.
    WaitingForPrimary,
}

#[derive(Debug, Error)]
pub enum InstallError {
    #[error(transparent)]
    Binary(#[from] binary::BinaryError),
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error("cannot put our entry into {path}: {source}")]
    Conflist {
        path: PathBuf,
        source: conflist::ConflistError,
    },
}
