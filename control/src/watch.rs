//! Watching the mesh file: reload on change, keep the last good mesh when an edit breaks it, and
//! publish each good mesh with a generation number.
//!
//! The parent directory is watched, not the file: editors save by writing a new file and renaming
//! it over the old one, and Kubernetes updates a mounted ConfigMap by swapping a `..data`
//! symlink — either way the watched inode is gone, and a watch on the file alone would go deaf.
//! Any change in the directory therefore triggers a (debounced) reload; a reload whose bytes are
//! unchanged publishes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::mesh::Mesh;
use nodetunnel::state::{load_str, Defaults, LoadError};

/// Quiet time after the last change before reloading: one save is often several events
/// (truncate, write, close; or create, write, rename), and a half-written file must not be read.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// One successfully loaded mesh.
#[derive(Debug)]
pub struct MeshSnapshot {
    /// 1 for the file as loaded at start-up, +1 for every later good load that changed it.
    pub generation: u64,
    pub mesh: Mesh,
}

/// What the status endpoint shows about loading.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct LoadStatus {
    pub path: PathBuf,
    /// Generation currently served.
    pub generation: u64,
    /// Warnings from the load that produced the served generation.
    pub warnings: Vec<String>,
    /// The most recent failed load (`file:line:column: message`), cleared by the next good one.
    pub last_error: Option<String>,
    /// Unix seconds of `last_error`.
    pub last_error_at: Option<u64>,
    pub failed_loads: u64,
}

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("mesh file path {0} does not name a file")]
    NotAFile(PathBuf),
    #[error("cannot watch directory {dir} for changes to the mesh file: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
}

/// Keeps the file watched while alive; dropping it stops watching.
pub struct MeshWatcher {
    rx: watch::Receiver<Arc<MeshSnapshot>>,
    status: Arc<Mutex<LoadStatus>>,
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeshWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshWatcher {
    /// Loads `path` (failing if it does not load: a control plane with no mesh has nothing to
    /// serve) and starts watching it.
    pub async fn start(path: PathBuf, defaults: Defaults) -> Result<MeshWatcher, WatchError> {
        if path.file_name().is_none() {
            return Err(WatchError::NotAFile(path));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };

        // Watch before the first load, so an edit between the two is not missed.
        let (tx, events) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                Ok(event) if is_change(&event.kind) => {
                    // Full means a reload is already pending, which will see this change too.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watching the mesh file's directory failed"),
            }
        })
        .map_err(|source| WatchError::Watch {
            dir: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;

        let first = load(path.clone(), defaults.clone()).await?;
        let snapshot = Arc::new(MeshSnapshot {
            generation: 1,
            mesh: first.mesh,
        });
        log_loaded(&path, &snapshot, &first.warnings);
        let status = Arc::new(Mutex::new(LoadStatus {
            path: path.clone(),
            generation: 1,
            warnings: first.warnings,
            ..LoadStatus::default()
        }));
        let (publish, rx) = watch::channel(snapshot);
        let reloader = Reloader {
            path,
            defaults,
            last_bytes: Some(first.bytes),
            publish,
            status: status.clone(),
        };
        let task = tokio::spawn(reloader.run(events));
        Ok(MeshWatcher {
            rx,
            status,
            _watcher: watcher,
            task,
        })
    }

    /// A receiver of every published mesh (starting with the current one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.rx.clone()
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> Arc<MeshSnapshot> {
        self.rx.borrow().clone()
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A shared handle to the status, for endpoints that outlive a borrow of the watcher.
    pub(crate) fn status_handle(&self) -> Arc<Mutex<LoadStatus>> {
        self.status.clone()
    }
}

/// Opening and reading the file (including our own reloads) are not changes.
fn is_change(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

struct Reloader {
    path: PathBuf,
    defaults: Defaults,
    /// Bytes of the last file we tried to load, good or bad: the same bytes are not reloaded
    /// (nor their error logged again). `None` after a failed read, for the same reason.
    last_bytes: Option<Vec<u8>>,
    publish: watch::Sender<Arc<MeshSnapshot>>,
    status: Arc<Mutex<LoadStatus>>,
}

impl Reloader {
    async fn run(mut self, mut events: mpsc::Receiver<()>) {
        while events.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            self.reload().await;
        }
    }

    async fn reload(&mut self) {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(source) => {
                // Deleted, or caught between unlink and rename: keep serving the last good
                // mesh; report it once, not on every event until the file is back.
                if self.last_bytes.take().is_some() {
                    self.failed(LoadError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
                return;
            }
        };
        if self.last_bytes.as_ref() == Some(&bytes) {
            return;
        }
        self.last_bytes = Some(bytes.clone());
        match parse(self.path.clone(), self.defaults.clone(), bytes).await {
            Ok(loaded) => {
                let generation = self.publish.borrow().generation + 1;
                let snapshot = Arc::new(MeshSnapshot {
                    generation,
                    mesh: loaded.mesh,
                });
                log_loaded(&self.path, &snapshot, &loaded.warnings);
                {
                    let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    status.generation = generation;
                    status.warnings = loaded.warnings;
                    status.last_error = None;
                    status.last_error_at = None;
                }
                self.publish.send_replace(snapshot);
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, error: LoadError) {
        let generation = self.publish.borrow().generation;
        tracing::error!(
            error = %error,
            generation,
            "mesh file did not load; still serving the last good mesh"
        );
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = Some(error.to_string());
        status.last_error_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        status.failed_loads += 1;
    }
}

struct LoadedMesh {
    mesh: Mesh,
    warnings: Vec<String>,
    bytes: Vec<u8>,
}

async fn load(path: PathBuf, defaults: Defaults) -> Result<LoadedMesh, LoadError> {
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    parse(path, defaults, bytes).await
}

/// Parsing 100,000 workloads takes a while: off the async workers.
async fn parse(path: PathBuf, defaults: Defaults, bytes: Vec<u8>) -> Result<LoadedMesh, LoadError> {
    let shown = path.clone();
    let task = tokio::task::spawn_blocking(move || {
        let text = std::str::from_utf8(&bytes).map_err(|e| LoadError::Read {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let loaded = load_str(text, &path, &defaults)?;
        let mesh = Mesh::from_store(&loaded.store);
        Ok(LoadedMesh {
            mesh,
            warnings: loaded.warnings,
            bytes,
        })
    });
    match task.await {
        Ok(result) => result,
        Err(join) => Err(LoadError::Unlocated {
            path: shown,
            message: format!("loading the mesh file panicked: {join}"),
        }),
    }
}

fn log_loaded(path: &Path, snapshot: &MeshSnapshot, warnings: &[String]) {
    use super::mesh::ResourceType;
    for w in warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    tracing::info!(
        file = %path.display(),
        generation = snapshot.generation,
        addresses = snapshot.mesh.resources(ResourceType::Address).len(),
        authorizations = snapshot.mesh.resources(ResourceType::Authorization).len(),
        "mesh loaded"
    );
}
