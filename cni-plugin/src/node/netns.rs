//! An open handle on a pod's network namespace, and running code inside it.
//!
//! The handle holds the namespace's fd, so it stays valid after the path it was opened as
//! (`/proc/<pid>/ns/net`, `/var/run/netns/cni-…`) goes away; the tunnel gets a dup of the same
//! fd over ZDS. Code runs inside the namespace on a fresh OS thread that calls
//! `setns(CLONE_NEWNET)` and then exits, so the namespace switch never leaks into a thread pool
//! (a tokio worker left in a pod netns would open the next pod's sockets in the wrong place).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;

use nix::sched::CloneFlags;

/// The identity of a network namespace: (st_dev, st_ino) of a handle on it, the same value as
/// `nodetunnel_zds::NetnsId`.
pub type NetnsId = (u64, u64);

/// What can go wrong opening or entering a network namespace.
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
    #[error("listing the interface addresses inside network namespace {path}: {source}")]
    Addresses { path: PathBuf, source: nix::Error },
}

/// An open handle on a network namespace. See the module docs.
#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    path: PathBuf,
    id: NetnsId,
}

impl PodNetns {
    /// Opens `path` and checks that it really is a network namespace (not a mount namespace, not
    /// a regular file a misconfigured runtime handed over).
    pub fn open(path: &Path) -> Result<PodNetns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        PodNetns::from_fd(file.into(), path.display().to_string())
    }

    /// Wraps an fd received from elsewhere (e.g. a ZDS message); `described_as` names it in
    /// messages. Checks it is a network namespace like [`open`](Self::open).
    pub fn from_fd(fd: OwnedFd, described_as: String) -> Result<PodNetns, NetnsError> {
        let path = PathBuf::from(described_as);
        check_is_netns(fd.as_fd(), &path)?;
        let id = fd_id(fd.as_fd()).map_err(|source| NetnsError::Inspect {
            path: path.clone(),
            source,
        })?;
        Ok(PodNetns { fd, path, id })
    }

    /// (st_dev, st_ino) of the namespace: equal for two handles on the same namespace.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What the handle was opened as, for messages (the path may no longer exist).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle on the same namespace (a dup of the fd), e.g. to hand one to the tunnel.
    pub fn try_clone(&self) -> io::Result<PodNetns> {
        Ok(PodNetns {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            id: self.id,
        })
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace and waits for it. Sockets
    /// `f` opens, and processes it spawns, live in the namespace. The thread ends with `f`, so
    /// the switch never leaks. A panic in `f` comes back as [`NetnsError::Panicked`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let fd = self.fd.as_fd();
        let path = &self.path;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name("in-pod-netns".to_string())
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

/// The identity of the network namespace this process's main thread is in (`/proc/self/ns/net`,
/// i.e. the agent's own, the host's when it runs with hostNetwork).
pub fn current_netns_id() -> io::Result<NetnsId> {
    path_id(Path::new("/proc/self/ns/net"))
}

/// (st_dev, st_ino) of what `path` points at (follows the `ns/net` magic link).
pub(crate) fn path_id(path: &Path) -> io::Result<NetnsId> {
    let st = nix::sys::stat::stat(path)?;
    Ok(stat_id(&st))
}

fn fd_id(fd: BorrowedFd<'_>) -> io::Result<NetnsId> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(stat_id(&st))
}

#[allow(clippy::useless_conversion)] // the field types differ between targets
fn stat_id(st: &nix::sys::stat::FileStat) -> NetnsId {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

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
            "a file on a {:?} filesystem, not nsfs",
            fs.filesystem_type()
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
mod tests {
    use super::*;

    #[test]
    fn own_netns_opens_and_matches_current_id() {
        let ns = PodNetns::open(Path::new("/proc/self/ns/net")).expect("open own netns");
        assert_eq!(ns.id(), current_netns_id().unwrap());
        let clone = ns.try_clone().unwrap();
        assert_eq!(clone.id(), ns.id());
    }

    #[test]
    fn other_namespace_kinds_and_files_are_refused() {
        for path in ["/proc/self/ns/mnt", "/proc/self/status"] {
            match PodNetns::open(Path::new(path)) {
                Err(NetnsError::NotANetns { path: p, found }) => {
                    assert_eq!(p, Path::new(path));
                    assert!(!found.starts_with("net:["), "{found}");
                }
                other => panic!("{path}: expected NotANetns, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_path_is_an_open_error_naming_it() {
        let err = PodNetns::open(Path::new("/nonexistent/ntt-netns")).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ntt-netns"), "{err}");
    }
}
