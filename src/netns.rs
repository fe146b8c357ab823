//! Network namespaces as values.
//!
//! A socket belongs to the namespace that was current on the creating thread. `setns(2)`
//! changes that per thread, so sockets for another namespace are created on a short-lived
//! dedicated thread — never on a tokio worker, which would leak the namespace into every
//! other task scheduled there. The sockets themselves are then used from the normal runtime.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
}
