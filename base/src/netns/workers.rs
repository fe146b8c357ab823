//! The shared `netns-<n>` threads behind [`NetnsHandle::run_async`]: a small fixed set of
//! long-lived threads, each entering the namespace of the job it runs. They return to the
//! process's own namespace whenever their queue runs dry, so they never keep a deleted pod's
//! namespace alive.

use std::os::fd::AsFd;
use std::sync::{mpsc, Arc, OnceLock};

use nix::sched::CloneFlags;

use super::{NetnsError, NetnsHandle};

/// Number of long-lived `netns` threads. Socket creation takes microseconds, so two threads
/// keep up with far more connections per second than the data path can carry.
const WORKER_THREADS: usize = 2;

/// Work for a `netns` thread: told whether entering the namespace worked, then run there.
struct Job {
    netns: Arc<NetnsHandle>,
    work: Box<dyn FnOnce(Result<(), NetnsError>) + Send>,
}

/// Runs `f` inside `netns` on a shared thread; see [`NetnsHandle::run_async`].
pub(super) async fn run<T, F>(netns: Arc<NetnsHandle>, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = netns.path.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        netns,
        work: Box::new(move |entered: Result<(), NetnsError>| {
            let _ = tx.send(entered.map(|()| f()));
        }),
    };
    workers().submit(job)?;
    rx.await.map_err(|_| NetnsError::WorkerUnavailable {
        path,
        why: "the netns worker thread dropped the request",
    })?
}

struct Workers {
    queues: Vec<mpsc::Sender<Job>>,
}

fn workers() -> &'static Workers {
    static WORKERS: OnceLock<Workers> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let queues = (0..WORKER_THREADS)
            .filter_map(|i| {
                let (tx, rx) = mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name(format!("netns-{i}"))
                    .spawn(move || worker(rx));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a netns worker thread");
                        None
                    }
                }
            })
            .collect();
        Workers { queues }
    })
}

impl Workers {
    fn submit(&self, job: Job) -> Result<(), NetnsError> {
        let unavailable = |job: Job, why| NetnsError::WorkerUnavailable {
            path: job.netns.path.clone(),
            why,
        };
        if self.queues.is_empty() {
            return Err(unavailable(job, "no netns worker thread is running"));
        }
        // The same namespace always goes to the same thread: consecutive jobs for one pod
        // then skip the setns.
        let id = job.netns.id;
        let index = (id.dev ^ id.inode) as usize % self.queues.len();
        self.queues[index]
            .send(job)
            .map_err(|mpsc::SendError(job)| unavailable(job, "the netns worker thread has exited"))
    }
}

/// A `netns` thread: enters each job's namespace (skipping the setns when already there) and
/// goes home once no job is waiting.
fn worker(queue: mpsc::Receiver<Job>) {
    let home = match NetnsHandle::current() {
        Ok(home) => home,
        Err(e) => {
            tracing::error!(error = %e, "netns worker cannot open its own namespace");
            // Answer every job with the error rather than leaving callers waiting.
            for job in queue {
                let path = job.netns.path.clone();
                (job.work)(Err(NetnsError::WorkerUnavailable {
                    path,
                    why: "the netns worker has no home namespace",
                }));
            }
            return;
        }
    };
    let mut current = home.id;
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let entered = if current == job.netns.id {
                Ok(())
            } else {
                match nix::sched::setns(job.netns.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    Ok(()) => {
                        current = job.netns.id;
                        Ok(())
                    }
                    Err(source) => Err(NetnsError::Enter {
                        path: job.netns.path.clone(),
                        source,
                    }),
                }
            };
            let Job { netns, work } = job;
            work(entered);
            drop(netns);
            next = queue.try_recv().ok();
        }
        if current != home.id {
            match nix::sched::setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                Ok(()) => current = home.id,
                Err(e) => tracing::error!(error = %e, "netns worker cannot return home"),
            }
        }
    }
}
