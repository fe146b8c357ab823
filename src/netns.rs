//! Network namespaces as values.
//!
//! A socket belongs to the namespace that was current on the creating thread. `setns(2)`
//! changes that per thread, so sockets for another namespace are created on a dedicated thread
//! — never on a tokio worker, which would leak the namespace into every other task scheduled
//! there. The sockets themselves are then used from the normal runtime.
//!
//! Two ways in: [`Netns::run`] spawns a fresh thread (rare, synchronous work such as binding a
//! pod's listeners), and [`Netns::run_async`] queues the work on a small fixed set of
//! long-lived `netns` threads (per-connection socket creation, where a thread spawn per
//! connection would cost more than the connection set-up itself). Those threads return to the
//! tunnel's own namespace whenever their queue runs dry, so they never keep a deleted pod's
//! namespace alive.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};

use nix::sched::{setns, CloneFlags};

/// An open handle on a network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// (device, inode) identifies a namespace: two handles on the same one compare equal.
    id: (u64, u64),
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Netns> {
        Netns::from_path(Path::new("/proc/thread-self/ns/net"))
    }

    /// A namespace by path: `/run/netns/<name>`, `/proc/<pid>/ns/net`.
    pub fn from_path(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        Netns::from_fd(file.into())
    }

    /// A namespace from an fd handed over by another process (e.g. over SCM_RIGHTS).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Netns> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Netns {
            fd,
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// The thread exits afterwards, so the caller's threads never change namespace.
    pub fn run<R, F>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    Ok(f())
                })?
                .join()
                .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
        })
    }
}

impl Netns {
    /// Runs `f` inside this namespace on one of the shared `netns` threads and awaits its
    /// result without blocking the caller's (tokio) thread. `f` must be short: it holds up
    /// every other namespace's work queued behind it.
    pub async fn run_async<R, F>(self: &Arc<Self>, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            netns: self.clone(),
            work: Box::new(move |entered: io::Result<()>| {
                let _ = tx.send(entered.map(|()| f()));
            }),
        };
        workers().submit(job)?;
        rx.await
            .map_err(|_| io::Error::other("the netns worker thread dropped the request"))?
    }
}

/// Work for a `netns` thread: told whether entering the namespace worked, then run there.
struct Job {
    netns: Arc<Netns>,
    work: Box<dyn FnOnce(io::Result<()>) + Send>,
}

/// Number of long-lived `netns` threads. Socket creation takes microseconds, so two threads
/// keep up with far more connections per second than the data path can carry.
const WORKER_THREADS: usize = 2;

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
    fn submit(&self, job: Job) -> io::Result<()> {
        if self.queues.is_empty() {
            return Err(io::Error::other("no netns worker thread is running"));
        }
        // The same namespace always goes to the same thread: consecutive jobs for one pod
        // then skip the setns.
        let (dev, ino) = job.netns.id;
        let index = (dev ^ ino) as usize % self.queues.len();
        self.queues[index]
            .send(job)
            .map_err(|_| io::Error::other("the netns worker thread has exited"))
    }
}

/// A `netns` thread: enters each job's namespace (skipping the setns when already there) and
/// goes home once no job is waiting.
fn worker(queue: mpsc::Receiver<Job>) {
    let home = match Netns::current() {
        Ok(home) => home,
        Err(e) => {
            tracing::error!(error = %e, "netns worker cannot open its own namespace");
            // Answer every job with the error rather than leaving callers waiting.
            for job in queue {
                (job.work)(Err(io::Error::other("netns worker has no home namespace")));
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
                match setns(job.netns.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    Ok(()) => {
                        current = job.netns.id;
                        Ok(())
                    }
                    Err(e) => Err(io::Error::from(e)),
                }
            };
            let Job { netns, work } = job;
            work(entered);
            drop(netns);
            next = queue.try_recv().ok();
        }
        if current != home.id {
            match setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                Ok(()) => current = home.id,
                Err(e) => tracing::error!(error = %e, "netns worker cannot return home"),
            }
        }
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Netns {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_equals_itself_and_runs_code() {
        let a = Netns::current().unwrap();
        let b = Netns::from_path(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(a, b);
        // Entering our own namespace works without privileges beyond what setns needs; when
        // unprivileged, setns fails with EPERM, which is reported as an error, not a panic.
        match a.run(|| 41 + 1) {
            Ok(v) => assert_eq!(v, 42),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
        }
    }

    /// The namespace a `netns` worker is in while it runs a job.
    fn namespace_of_worker(ns: &Arc<Netns>) -> io::Result<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        rt.block_on(ns.run_async(|| Netns::current().map(|n| n.id())))?
    }

    #[test]
    fn shared_workers_enter_each_namespace_and_go_home() {
        let home = Arc::new(Netns::current().unwrap());
        // Our own namespace is always enterable when we are root; unprivileged setns fails.
        let Ok(seen) = namespace_of_worker(&home) else {
            return;
        };
        assert_eq!(seen, home.id());
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        // A fresh namespace (unshare on a scratch thread, handle kept via /proc).
        let other = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            Arc::new(Netns::current().unwrap())
        })
        .join()
        .unwrap();
        assert_ne!(other.id(), home.id());
        for _ in 0..20 {
            assert_eq!(namespace_of_worker(&other).unwrap(), other.id());
            assert_eq!(namespace_of_worker(&home).unwrap(), home.id());
        }
        // Idle workers go back home (right after answering), so they never keep a deleted
        // pod's namespace alive.
        let all_home = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .map(|c| c.starts_with("netns-"))
                        .unwrap_or(false)
                })
                .all(|t| {
                    Netns::from_path(&t.path().join("ns/net"))
                        .map(|n| n.id())
                        .ok()
                        == Some(home.id())
                })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !all_home() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(all_home(), "a netns worker stayed inside a pod namespace");
    }

    #[test]
    fn a_namespace_that_cannot_be_entered_is_an_error_not_a_hang() {
        // A regular file is not a namespace: setns fails with EINVAL.
        let file = tempfile::tempfile().unwrap();
        let bogus = Arc::new(Netns::from_fd(file.into()).unwrap());
        let err = namespace_of_worker(&bogus).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }
}
