//! Change notifications for the directories the installer cares about, debounced: a primary
//! CNI that writes its config in several steps (truncate, write, chmod; or temp file + rename)
//! yields one re-check after it settles, not one per step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::files;

/// Quiet time after the last event before the installer re-checks.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Which files in a watched directory matter.
#[derive(Debug, Clone)]
pub enum Interest {
    /// Any CNI config file (our own temporary files excluded).
    Configs,
    /// Exactly this file name.
    File(String),
}

impl Interest {
    fn matches(&self, path: &Path) -> bool {
        match self {
            Interest::Configs => files::shape_of(path).is_some() && !files::is_temp(path),
            Interest::File(name) => path.file_name().is_some_and(|n| n == name.as_str()),
        }
    }
}

/// Whether a raw notification may mean one of the files we care about changed.
fn relevant(res: &notify::Result<notify::Event>, interests: &[(PathBuf, Interest)]) -> bool {
    match res {
        // An event without paths (e.g. a queue overflow) may hide anything.
        Ok(ev) if ev.paths.is_empty() => true,
        // Reads (ours, the runtime's, anyone's) change nothing; reacting to them would make
        // every check trigger the next one.
        Ok(ev) if is_read_only(&ev.kind) => false,
        Ok(ev) => ev.paths.iter().any(|p| {
            interests
                .iter()
                .any(|(dir, interest)| p.parent() == Some(dir.as_path()) && interest.matches(p))
        }),
        // A watch error: re-check rather than trust the watch.
        Err(_) => true,
    }
}

fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

/// A live inotify watch on some directories (non-recursive).
pub struct DirWatch {
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

impl DirWatch {
    /// Starts watching each directory for changes to the files it is interested in.
    pub fn new(dirs: &[(PathBuf, Interest)]) -> notify::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let interests: Vec<_> = dirs.to_vec();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if relevant(&res, &interests) {
                    let _ = tx.send(());
                }
            })?;
        for (dir, _) in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self {
            _watcher: watcher,
            events,
        })
    }

    /// Waits for a relevant change, then until [`DEBOUNCE`] passes without another one.
    /// Returns `false` if the watch has ended (its thread is gone).
    pub async fn changed(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        loop {
            match timeout(DEBOUNCE, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests;
