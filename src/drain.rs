//! Draining a group of connections: stop taking new ones, let live ones finish up to a
//! deadline, then cut what is left.
//!
//! Every connection task of a listener group (the dedicated tunnel, or one pod in shared mode)
//! runs through one [`ConnectionTasks`]. Removing a pod or shutting down then has one
//! answer to "are its connections done?", instead of polling counters.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection tasks of one listener group. Cloning shares the group.
#[derive(Clone, Debug, Default)]
pub struct ConnectionTasks {
    tracker: TaskTracker,
    /// Cancelled when draining starts: long-lived multiplexed connections (inbound HBONE)
    /// stop taking new streams and close once their streams end.
    draining: CancellationToken,
    /// Cancelled at the drain deadline: every task still running is dropped.
    cut: CancellationToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Tasks still running at the deadline, which were cut.
    pub cut: usize,
}

impl ConnectionTasks {
    pub fn new() -> ConnectionTasks {
        ConnectionTasks::default()
    }

    /// Spawns `task` as part of the group; it is dropped if the drain deadline passes.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.wrap(task));
    }

    /// `task`, counted in the group and cut at the drain deadline; for callers that spawn
    /// themselves (e.g. the HBONE server spawning one task per stream).
    pub fn wrap<F>(&self, task: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cut = self.cut.clone();
        // Boxed: moved into the select, the task would otherwise take its size twice in this
        // future (the captured value and the select's own), and connection tasks are the
        // tunnel's memory per connection.
        let task = Box::pin(task);
        self.tracker.track_future(async move {
            tokio::select! {
                biased;
                _ = cut.cancelled() => {}
                _ = task => {}
            }
        })
    }

    /// Resolves when draining starts.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.draining.clone().cancelled_owned()
    }

    /// Tasks running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Starts draining and waits until every task has finished or `deadline` passed; then
    /// cuts the rest and waits for them to be dropped.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.tracker.close();
        self.draining.cancel();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return DrainOutcome { cut: 0 };
        }
        let cut = self.tracker.len();
        self.cut.cancel();
        self.tracker.wait().await;
        DrainOutcome { cut }
    }
}

#[cfg(test)]
mod tests;
