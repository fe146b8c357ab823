//! The installer: puts the binary, kubeconfig and conflist entry in place, keeps them there
//! while the agent runs, and takes them out when the agent goes for good.
//!
//! Following Istio's `install.go`: everything is (re)checked as a whole on any change of the
//! CNI config dir or our binary, and written only where it differs from what we want, so the
//! shared config dir (watched by other node agents and the runtime) sees no churn. A fallback
//! timer re-checks too, which also picks up a rotated service-account token for the kubeconfig.
//!
//! File work is small and local, so it runs inline on the async task.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::binary::{self, BinaryOutcome};
use super::conflist;
use super::files;
use super::kubeconfig;
use super::watch::{DirWatch, Interest};
use super::{ConflistState, InstallConfig, InstallError, InstallReport};

/// Default period of the fallback re-check.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Mode for a config file we create when the original's mode is unknown.
const DEFAULT_CONFIG_MODE: u32 = 0o644;

/// How one install pass ended, in the terms of Istio's `istio_cni_installs_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// Everything in place after a pass that installed or repaired something (or the first
    /// good pass, or the first after a failure). Passes that found all in place and changed
    /// nothing are not counted: Istio counts a pass per install, not per look.
    Success,
    CopyBinariesFailure,
    CreateKubeconfigFailure,
    CreateCniConfigFailure,
}

impl PassResult {
    /// Istio's `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            PassResult::Success => "SUCCESS",
            PassResult::CopyBinariesFailure => "COPY_BINARIES_FAILURE",
            PassResult::CreateKubeconfigFailure => "CREATE_KUBECONFIG_FAILURE",
            PassResult::CreateCniConfigFailure => "CREATE_CNI_CONFIG_FAILURE",
        }
    }
}

/// Told of each counted pass (see [`PassResult`]).
pub type PassObserver = Arc<dyn Fn(PassResult) + Send + Sync>;

/// Owns the plugin's installation on this node.
pub struct Installer {
    cfg: InstallConfig,
    kube: Mutex<Option<kube::Config>>,
    /// The config file that held our entry after the last check (to log a preemption).
    last_primary: Mutex<Option<PathBuf>>,
    ready: watch::Sender<bool>,
    recheck: Duration,
    checks: AtomicU64,
    /// Whether the last pass ended installed (a success after a failure is counted).
    last_ok: AtomicBool,
    observer: Option<PassObserver>,
}

impl Installer {
    pub fn new(cfg: InstallConfig) -> Self {
        Self {
            cfg,
            kube: Mutex::new(None),
            last_primary: Mutex::new(None),
            ready: watch::Sender::new(false),
            recheck: RECHECK_INTERVAL,
            checks: AtomicU64::new(0),
            last_ok: AtomicBool::new(false),
            observer: None,
        }
    }

    /// Calls `observer` after each counted pass (the agent's `istio_cni_installs_total`).
    pub fn with_pass_observer(mut self, observer: PassObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Changes the period of the fallback re-check (tests, or a tighter node policy).
    pub fn with_recheck_interval(mut self, every: Duration) -> Self {
        self.recheck = every;
        self
    }

    pub fn config(&self) -> &InstallConfig {
        &self.cfg
    }

    /// Whether our entry is in the primary config as of the last check. The agent reports
    /// ready only while this is true (Istio's installer readiness flag).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// One full pass: binary, kubeconfig (from `kube`, remembered for later passes), conflist
    /// entry. Does not wait for a primary config: [`ConflistState::WaitingForPrimary`] says
    /// there is none yet, and [`keep_installed`](Self::keep_installed) finishes the job when
    /// it appears (readiness stays false until then).
    pub async fn install(&self, kube: &kube::Config) -> Result<InstallReport, InstallError> {
        *lock(&self.kube) = Some(kube.clone());
        let report = self.check();
        match &report {
            Ok(r) => log_report(r, "installed"),
            Err(e) => warn!(error = %e, "CNI plugin install failed"),
        }
        report
    }

    /// Re-checks on every settled change of the CNI config dir or our binary, and every
    /// fallback period, until `shutdown` completes; logs each repair. Errors are logged and
    /// retried at the next change or period (readiness drops meanwhile). If the directories
    /// cannot be watched, the fallback period alone drives the checks.
    pub async fn keep_installed<F: Future>(&self, shutdown: F) {
        let mut watch = self.start_watch();
        // Check once with the watch in place: a change between `install` and now would
        // otherwise wait for the fallback period.
        self.recheck_and_log();
        let mut ticker = tokio::time::interval(self.recheck);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset(); // the first tick would fire at once, and we have just checked.
        tokio::pin!(shutdown);
        loop {
            let cause = tokio::select! {
                _ = &mut shutdown => break,
                alive = changed(&mut watch) => {
                    if !alive {
                        warn!("the CNI directory watch ended; relying on the periodic re-check");
                        watch = None;
                    }
                    "change"
                }
                _ = ticker.tick() => {
                    if watch.is_none() {
                        watch = self.start_watch();
                    }
                    "period"
                }
            };
            debug!(cause, "re-checking the CNI plugin install");
            self.recheck_and_log();
        }
    }

    fn recheck_and_log(&self) {
        match self.check() {
            Ok(r) => log_report(&r, "repaired"),
            Err(e) => warn!(error = %e, "CNI plugin install check failed; will retry"),
        }
    }

    /// How many checks (install passes, re-checks) have completed, for metrics; a caller can
    /// also tell from it that `keep_installed` is up (its first check follows the watch).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Takes our entry out of every config file in the conf dir that has one (not only the
    /// current primary: a file that was primary earlier may still hold it), then removes the
    /// kubeconfig and the binary. Everything is attempted; the first failure is returned.
    /// Call only after `keep_installed` has stopped, and only when the agent is going away
    /// for good (see [`super::upgrade`] for Istio's rule).
    pub fn uninstall(&self) -> Result<(), InstallError> {
        self.ready.send_replace(false);
        let mut first_err: Option<InstallError> = None;
        let mut note = |r: Result<(), InstallError>| {
            if let Err(e) = r {
                warn!(error = %e, "CNI plugin uninstall step failed");
                first_err.get_or_insert(e);
            }
        };
        note(self.remove_entries());
        note(
            files::remove_if_present(&self.cfg.kubeconfig_path)
                .map(|_| ())
                .map_err(Into::into),
        );
        note(
            binary::remove(&self.binary_target())
                .map(|_| ())
                .map_err(Into::into),
        );
        match first_err {
            Some(e) => Err(e),
            None => {
                info!("CNI plugin uninstalled");
                Ok(())
            }
        }
    }

    fn remove_entries(&self) -> Result<(), InstallError> {
        let mut first_err = None;
        for path in files::config_files(&self.cfg.cni_net_dir)? {
            // Files that are not JSON cannot hold our entry in a form the runtime reads.
            let Ok(doc) = files::read_json(&path) else {
                continue;
            };
            if !conflist::contains(&doc, &self.cfg.plugin_type) {
                continue;
            }
            let cleaned = conflist::remove(doc, &self.cfg.plugin_type);
            let mode = files::mode_of(&path).unwrap_or(DEFAULT_CONFIG_MODE);
            match files::atomic_write(&path, &files::to_pretty(&cleaned), mode) {
                Ok(()) => info!(path = %path.display(), "removed our entry from the CNI config"),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    fn binary_target(&self) -> PathBuf {
        self.cfg.cni_bin_dir.join(&self.cfg.plugin_type)
    }

    fn start_watch(&self) -> Option<DirWatch> {
        let dirs = [
            (self.cfg.cni_net_dir.clone(), Interest::Configs),
            (
                self.cfg.cni_bin_dir.clone(),
                Interest::File(self.cfg.plugin_type.clone()),
            ),
        ];
        match DirWatch::new(&dirs) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the CNI directories; re-checking periodically");
                None
            }
        }
    }

    /// One pass over binary, kubeconfig and conflist; updates readiness.
    fn check(&self) -> Result<InstallReport, InstallError> {
        let result = self.check_inner();
        self.checks.fetch_add(1, Ordering::Relaxed);
        let installed = matches!(&result, Ok(r) if r.is_installed());
        let was_ok = self.last_ok.swap(installed, Ordering::Relaxed);
        let counted = match &result {
            Ok(r) if r.is_installed() && (!was_ok || r.changed_anything()) => {
                Some(PassResult::Success)
            }
            Ok(_) => None,
            Err(InstallError::Binary(_)) => Some(PassResult::CopyBinariesFailure),
            Err(InstallError::Kubeconfig(_)) => Some(PassResult::CreateKubeconfigFailure),
            Err(InstallError::File(_) | InstallError::Conflist { .. }) => {
                Some(PassResult::CreateCniConfigFailure)
            }
        };
        if let (Some(observer), Some(counted)) = (&self.observer, counted) {
            observer(counted);
        }
        self.ready
            .send_if_modified(|r| std::mem::replace(r, installed) != installed);
        result
    }

    fn check_inner(&self) -> Result<InstallReport, InstallError> {
        let binary = binary::ensure(&self.cfg.plugin_source, &self.binary_target())?;
        let kube = lock(&self.kube).clone();
        let kubeconfig_written = match kube {
            Some(kube) => kubeconfig::ensure(&kube, &self.cfg.kubeconfig_path)?,
            None => false,
        };
        let conflist = self.ensure_entry()?;
        Ok(InstallReport {
            binary,
            kubeconfig_written,
            conflist,
        })
    }

    /// Puts our entry last in the primary config. A list is rewritten in place (only if it
    /// changes); a single config is wrapped into a list written next to it, and the single
    /// file is removed, as Istio does (`X.conf` → `X.conflist`).
    fn ensure_entry(&self) -> Result<ConflistState, InstallError> {
        let explicit = self.cfg.conf_name.as_deref();
        let Some(primary) = files::choose_primary(&self.cfg.cni_net_dir, explicit)? else {
            return Ok(ConflistState::WaitingForPrimary);
        };
        let doc = files::read_json(&primary)?;
        let desired = conflist::insert(doc.clone(), &self.cfg.entry).map_err(|source| {
            InstallError::Conflist {
                path: primary.clone(),
                source,
            }
        })?;
        let mode = files::mode_of(&primary).unwrap_or(DEFAULT_CONFIG_MODE);
        let is_list = doc.get("plugins").is_some()
            || files::shape_of(&primary) == Some(conflist::Shape::List);
        let state = if is_list {
            let changed = desired != doc;
            if changed {
                files::atomic_write(&primary, &files::to_pretty(&desired), mode)?;
            }
            ConflistState::Installed {
                path: primary,
                changed,
                wrapped_from: None,
            }
        } else {
            let target = files::list_path_for(&primary);
            files::atomic_write(&target, &files::to_pretty(&desired), mode)?;
            files::remove_if_present(&primary)?;
            ConflistState::Installed {
                path: target,
                changed: true,
                wrapped_from: Some(primary),
            }
        };
        if let ConflistState::Installed { path, .. } = &state {
            let mut last = lock(&self.last_primary);
            if last.as_ref().is_some_and(|p| p != path) {
                info!(
                    from = %last.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    to = %path.display(),
                    "the primary CNI config changed"
                );
            }
            *last = Some(path.clone());
        }
        Ok(state)
    }
}

async fn changed(watch: &mut Option<DirWatch>) -> bool {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_report(r: &InstallReport, verb: &str) {
    if r.binary == BinaryOutcome::Copied {
        info!("{verb}: copied the plugin binary");
    }
    if r.kubeconfig_written {
        info!("{verb}: wrote the plugin kubeconfig");
    }
    match &r.conflist {
        ConflistState::Installed {
            path,
            changed: true,
            wrapped_from,
        } => match wrapped_from {
            Some(from) => info!(
                from = %from.display(),
                to = %path.display(),
                "{verb}: wrapped the primary CNI config into a list with our entry last"
            ),
            None => {
                info!(path = %path.display(), "{verb}: put our entry last in the primary CNI config")
            }
        },
        ConflistState::Installed { .. } => {}
        // Logged once by `install`; every later check would repeat it.
        ConflistState::WaitingForPrimary if verb == "installed" => {
            info!("no primary CNI config yet; waiting for the primary CNI to install one")
        }
        ConflistState::WaitingForPrimary => debug!("still no primary CNI config"),
    }
}
