//! Network namespaces as values: an open handle, its identity, and running code inside it.
//!
//! A socket belongs to the namespace that was current on the thread that created it, and a
//! process it spawns starts in that namespace too. `setns(2)` changes the namespace per
//! thread, so code for another namespace never runs on a thread anyone else uses: a tokio
//! worker left inside a pod's namespace would open the next task's sockets in the wrong place.
//! Two ways in:
//!
//! - [`NetnsHandle::run`] spawns a fresh OS thread, enters, runs, exits (rare, synchronous
//!   work: binding a pod's listeners, applying its rules).
//! - [`NetnsHandle::run_async`] queues the work on a small fixed set of long-lived `netns-<n>`
//!   threads (see `workers`): per-connection socket creation, where a thread spawn per
//!   connection would cost more than the connection set-up itself.
//!
//! The handle holds the namespace's fd, so it stays valid after the path it was opened as
//! (`/proc/<pid>/ns/net`, `/var/run/netns/cni-…`) goes away, and it keeps the namespace alive.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use nix::sched::CloneFlags;

mod workers;

/// The identity of a network namespace: the (st_dev, st_ino) of any handle on it. Two handles
/// on the same namespace have the same id; ZDS and the CNI agent compare namespaces by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub inode: u64,
}

impl NetnsId {
    pub const fn new(dev: u64, inode: u64) -> NetnsId {
        NetnsId { dev, inode }
    }

    /// The namespace (or file) behind `fd`.
    pub fn of_fd(fd: impl AsFd) -> io::Result<NetnsId> {
        let st = nix::sys::stat::fstat(fd.as_fd())?;
        Ok(NetnsId::of_stat(&st))
    }

    /// What `path` points at, following the `ns/net` magic link.
    pub fn of_path(path: &Path) -> io::Result<NetnsId> {
        let st = nix::sys::stat::stat(path)?;
        Ok(NetnsId::of_stat(&st))
    }

    /// The namespace this process's main thread is in (`/proc/self/ns/net`): the process's
    /// own, the host's when it runs with hostNetwork.
    pub fn of_process() -> io::Result<NetnsId> {
        NetnsId::of_path(Path::new("/proc/self/ns/net"))
    }

    #[allow(clippy::useless_conversion)] // the field types differ between targets
    fn of_stat(st: &nix::sys::stat::FileStat) -> NetnsId {
        NetnsId::new(u64::from(st.st_dev), u64::from(st.st_ino))
    }
}

/// `dev:inode`, as logs and `/config_dump` show it.
impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.inode)
    }
}

/// What can go wrong opening or entering a network namespace. Each names the namespace by
/// what it was opened as.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace (its fd points at {found:?})")]
    NotANetns { path: PathBuf, found: String },
    #[error("inspecting the fd of network namespace {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("starting a thread to enter network namespace {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path} (setns): {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("code running inside network namespace {path} panicked: {message}")]
    Panicked { path: PathBuf, message: String },
    #[error("running code inside network namespace {path}: {why}")]
    WorkerUnavailable { path: PathBuf, why: &'static str },
    #[error("listing the interface addresses inside network namespace {path}: {source}")]
    Addresses { path: PathBuf, source: nix::Error },
}

thread_local! {
    /// The namespace this thread lives in outside [`NetnsHandle::run_here`]: opened on the
    /// thread's first call (it is at home then, since `run_here` always brings it back) and
    /// closed when the thread ends.
    static HOME: std::cell::OnceCell<NetnsHandle> = const { std::cell::OnceCell::new() };
}

/// For callers whose own API is `io::Result` (socket creation): keeps the error's kind (an
/// EPERM from setns stays `PermissionDenied`) and its message.
impl From<NetnsError> for io::Error {
    fn from(error: NetnsError) -> io::Error {
        let kind = match &error {
            NetnsError::Open { source, .. }
            | NetnsError::Inspect { source, .. }
            | NetnsError::Thread { source, .. } => source.kind(),
            NetnsError::Enter { source, .. } | NetnsError::Addresses { source, .. } => {
                io::Error::from(*source).kind()
            }
            NetnsError::NotANetns { .. } => io::ErrorKind::InvalidInput,
            NetnsError::Panicked { .. } | NetnsError::WorkerUnavailable { .. } => {
                io::ErrorKind::Other
            }
        };
        io::Error::new(kind, error)
    }
}

/// An open handle on a network namespace, checked to be one. Equal handles are on the same
/// namespace. See the module docs.
#[derive(Debug)]
pub struct NetnsHandle {
    fd: OwnedFd,
    /// What the handle was opened as, for messages (the path may no longer exist).
    path: PathBuf,
    id: NetnsId,
}

impl NetnsHandle {
    /// The namespace of the calling thread.
    pub fn current() -> Result<NetnsHandle, NetnsError> {
        NetnsHandle::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Opens `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`) and checks that it really is a
    /// network namespace (not a mount namespace, not a regular file a misconfigured runtime
    /// handed over).
    pub fn open(path: &Path) -> Result<NetnsHandle, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        NetnsHandle::from_fd(file.into(), path)
    }

    /// Wraps an fd received from elsewhere (e.g. over ZDS / SCM_RIGHTS); `described_as` names
    /// it in messages. Checks it is a network namespace like [`open`](Self::open).
    pub fn from_fd(
        fd: OwnedFd,
        described_as: impl Into<PathBuf>,
    ) -> Result<NetnsHandle, NetnsError> {
        let path = described_as.into();
        check_is_netns(fd.as_fd(), &path)?;
        let id = NetnsId::of_fd(&fd).map_err(|source| NetnsError::Inspect {
            path: path.clone(),
            source,
        })?;
        Ok(NetnsHandle { fd, path, id })
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// What the handle was opened as, for messages (the path may no longer exist).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle on the same namespace (a dup of the fd), e.g. to hand one to the tunnel.
    pub fn try_clone(&self) -> io::Result<NetnsHandle> {
        Ok(NetnsHandle {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            id: self.id,
        })
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace and waits for it. Sockets
    /// `f` opens, and processes it spawns, live in the namespace. The thread ends with `f`, so
    /// the caller's threads never change namespace. A panic in `f` comes back as
    /// [`NetnsError::Panicked`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let fd = self.fd.as_fd();
        let path = &self.path;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name("netns".to_string())
                .spawn_scoped(scope, move || {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map(|()| f())
                })
                .map_err(|source| NetnsError::Thread {
                    path: path.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(source)) => Err(NetnsError::Enter {
                    path: path.clone(),
                    source,
                }),
                Err(panic) => Err(NetnsError::Panicked {
                    path: path.clone(),
                    message: panic_message(panic.as_ref()),
                }),
            }
        })
    }

    /// Runs `f` inside this namespace on the calling thread: enters it, runs `f`, and returns
    /// the thread to the namespace it was in, all synchronously. For short, non-blocking work
    /// (creating a socket) on an async runtime's thread: nothing else runs on the thread while
    /// it is inside, because nothing is awaited in between, so no other task ever sees the
    /// namespace. Cheaper than [`run_async`](Self::run_async) by the hop to a netns thread
    /// and back (a wake-up each way).
    ///
    /// The way back is guaranteed or the process ends: a thread left in a pod's namespace
    /// would open every later socket there, so if the return `setns` fails (or `f` panics and
    /// the return fails while unwinding) the process aborts after logging why.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        HOME.with(|home| {
            let home = match home.get() {
                Some(home) => home,
                None => {
                    let current = NetnsHandle::current()?;
                    home.get_or_init(|| current)
                }
            };
            if home.id == self.id {
                return Ok(f());
            }
            nix::sched::setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                NetnsError::Enter {
                    path: self.path.clone(),
                    source,
                }
            })?;
            struct GoHome<'a>(&'a NetnsHandle);
            impl Drop for GoHome<'_> {
                fn drop(&mut self) {
                    let back = nix::sched::setns(self.0.fd.as_fd(), CloneFlags::CLONE_NEWNET);
                    if let Err(e) = back {
                        tracing::error!(error = %e, home = %self.0.path.display(), "cannot return a thread to its own network namespace; aborting");
                        std::process::abort();
                    }
                }
            }
            let _back = GoHome(home);
            Ok(f())
        })
    }

    /// Runs `f` inside this namespace on one of the shared `netns-<n>` threads and awaits its
    /// result without blocking the caller's (tokio) thread. `f` must be short: it holds up
    /// every other namespace's work queued behind it.
    pub async fn run_async<T, F>(self: &Arc<Self>, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        workers::run(self.clone(), f).await
    }

    /// The addresses on the namespace's interfaces (loopback included), IPv4 and IPv6.
    pub fn addresses(&self) -> Result<Vec<IpAddr>, NetnsError> {
        let listed = self.run(|| -> nix::Result<Vec<IpAddr>> {
            let mut addrs = Vec::new();
            for ifa in nix::ifaddrs::getifaddrs()? {
                let Some(addr) = ifa.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    addrs.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    addrs.push(IpAddr::V6(v6.ip()));
                }
            }
            Ok(addrs)
        })?;
        listed.map_err(|source| NetnsError::Addresses {
            path: self.path.clone(),
            source,
        })
    }
}

impl AsFd for NetnsHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PartialEq for NetnsHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetnsHandle {}

/// Whether `fd` is a network namespace. A namespace fd lives on nsfs; its `/proc/self/fd/<n>`
/// link reads `net:[<inode>]` (or `mnt:[…]`, `pid:[…]` for other kinds) when it was opened
/// through `/proc/<pid>/ns/net`, but shows the mount point for a bind-mounted one
/// (`/var/run/netns/cni-…`). Then the type is settled by entering it on a throwaway thread,
/// which the kernel refuses (EINVAL) for any other kind. All without the `NS_GET_NSTYPE`
/// ioctl, which would need `unsafe`.
fn check_is_netns(fd: BorrowedFd<'_>, path: &Path) -> Result<(), NetnsError> {
    let inspect = |source: io::Error| NetnsError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let not_netns = |found: String| NetnsError::NotANetns {
        path: path.to_path_buf(),
        found,
    };
    let fs = nix::sys::statfs::fstatfs(fd).map_err(|e| inspect(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(not_netns(format!(
            "a file on a filesystem of type {:#x}, not nsfs",
            fs.filesystem_type().0
        )));
    }
    let link = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
    let target = std::fs::read_link(&link).map_err(inspect)?;
    let target = target.to_string_lossy().into_owned();
    if let Some((kind, _)) = target.split_once(":[") {
        return if kind == "net" {
            Ok(())
        } else {
            Err(not_netns(target))
        };
    }
    let entered = thread::scope(|scope| {
        thread::Builder::new()
            .name("netns-probe".to_string())
            .spawn_scoped(scope, move || {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
            })
            .map_err(inspect)?
            .join()
            .map_err(|_| inspect(io::Error::other("the probe thread panicked")))
    })?;
    match entered {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            Err(not_netns(format!("{target} (a namespace of another kind)")))
        }
        Err(e) => Err(inspect(e.into())),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests;
