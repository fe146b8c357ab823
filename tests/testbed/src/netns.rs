//! Named network namespaces owned by this process: creation, running code and commands inside
//! them, and removal — on drop, on a signal (via [`cleanup_all`]), or by a later run's
//! [`sweep_stale`] when this process was killed outright.
//!
//! Every name starts with [`PREFIX`] followed by the owning pid, so the sweep can tell a leftover
//! (owner gone) from a namespace of a live run, and never touches a namespace it did not make.

use std::fs::{self, File};
use std::panic;
use std::path::PathBuf;
use std::process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cmd;
use crate::error::{Error, Result};

/// Every namespace the test bed creates is named `ntt<pid>-<n>-<suffix>`.
pub const PREFIX: &str = "ntt";

const NETNS_DIR: &str = "/run/netns";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Returns a prefix unique to this process and call: `ntt<pid>-<n>`.
pub fn unique_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}", process::id())
}

/// Namespaces and child processes that are alive right now, for [`cleanup_all`].
struct Live {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    // A panic while holding the lock must not stop later cleanups.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register_pid(pid: i32) {
    live().pids.push(pid);
}

pub(crate) fn unregister_pid(pid: i32) {
    live().pids.retain(|p| *p != pid);
}

/// A topology's temp dir (configs, CA, logs, sockets), named after its namespace prefix and
/// registered so the signal handler removes it too.
pub(crate) fn topology_dir(prefix: &str, name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-{name}-"))
        .tempdir()
        .map_err(|e| Error::io("creating the topology's temp dir", e))?;
    register_dir(dir.path());
    Ok(dir)
}

pub(crate) fn register_dir(dir: &std::path::Path) {
    live().dirs.push(dir.to_path_buf());
}

pub(crate) fn unregister_dir(dir: &std::path::Path) {
    live().dirs.retain(|d| d != dir);
}

/// Kills every child process and deletes every namespace and temp dir this process created and
/// still holds. For signal handlers (Ctrl-C in the demo): normal code relies on `Drop`.
pub fn cleanup_all() {
    let (pids, namespaces, dirs) = {
        let mut live = live();
        (
            std::mem::take(&mut live.pids),
            std::mem::take(&mut live.namespaces),
            std::mem::take(&mut live.dirs),
        )
    };
    for pid in pids {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for name in namespaces {
        remove_namespace(&name);
    }
    for dir in dirs {
        let _ = fs::remove_dir_all(dir);
    }
}

/// [`sweep_stale_now`], once per process (topologies call it when they are built).
pub fn sweep_stale() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_stale_now);
}

/// Deletes namespaces named `ntt<pid>-...` whose owning process no longer exists (leftovers of
/// a killed run), first killing processes still running inside them. Names without the prefix
/// are never touched.
pub fn sweep_stale_now() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(owner) = owner_pid(&name) {
            let alive = owner == process::id() || PathBuf::from(format!("/proc/{owner}")).exists();
            if !alive {
                eprintln!("testbed: removing stale namespace {name} (owner pid {owner} is gone)");
                remove_namespace(&name);
            }
        }
    }
}

/// `ntt<digits>-...` → the digits; anything else → `None` (not ours, never touched).
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Kills the processes inside namespace `name` (never this process) and deletes the name.
fn remove_namespace(name: &str) {
    debug_assert!(
        owner_pid(name).is_some(),
        "refusing to remove foreign netns {name}"
    );
    if owner_pid(name).is_none() {
        return;
    }
    kill_processes_in(name);
    let _ = cmd::output("ip", &["netns", "del", name]);
    // Per-namespace resolver files (`ip netns exec` mounts them), e.g. a `dns::DnsServer`'s.
    let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
}

fn kill_processes_in(name: &str) {
    let Ok(out) = cmd::output("ip", &["netns", "pids", name]) else {
        return;
    };
    let me = process::id() as i32;
    // Tunnels we started are stopped by their own handle (or by `cleanup_all`), never here: a
    // shared-mode tunnel lives in a node namespace but may be inside a pod namespace for a
    // moment (setns), and deleting that pod must not kill it.
    let ours = live().pids.clone();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p != me && !ours.contains(p))
        .collect();
    for pid in &pids {
        let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // Give the kernel a moment to reap them so the veth pair goes away with the namespace.
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids
        .iter()
        .any(|p| PathBuf::from(format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
}

struct Inner {
    name: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        live().namespaces.retain(|n| n != &self.name);
        remove_namespace(&self.name);
    }
}

/// A named network namespace (`/run/netns/<name>`), deleted when the last handle is dropped —
/// also while a test panics. Cloning is cheap; a [`Tunnel`](crate::Tunnel) keeps a clone so the
/// namespace outlives the process running in it.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

impl Netns {
    /// Creates namespace `name` (which must start with a [`unique_prefix`]) and brings up `lo`.
    pub fn create(name: &str) -> Result<Netns> {
        if owner_pid(name) != Some(process::id()) {
            return Err(Error::Invalid(format!(
                "netns name {name:?} must start with {PREFIX}{}-",
                process::id()
            )));
        }
        cmd::run("ip", &["netns", "add", name])?;
        live().namespaces.push(name.to_string());
        let ns = Netns {
            inner: Arc::new(Inner {
                name: name.to_string(),
            }),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(self.name())
    }

    /// Starts a thread that enters this namespace, then runs `f`. Sockets `f` creates live in
    /// the namespace (and stay there when moved to another thread). Panics in `f` surface at
    /// `join()`; failing to enter the namespace panics the thread too, before `f` runs.
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        thread::Builder::new()
            .name(format!("in-{}", self.name()))
            .spawn(move || {
                enter(&path);
                f()
            })
            .expect("spawning a thread")
    }

    /// Like [`spawn`](Self::spawn) but waits for `f`, re-raising its panic in the caller.
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => panic::resume_unwind(panic),
        }
    }

    /// `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// `ip netns exec <name> program args...`, to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name(), program];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Established TCP connections in this namespace matching an `ss` filter, e.g.
    /// `"( sport = :15008 )"`; one line of `ss -Htn` each.
    pub fn established(&self, filter: &str) -> Result<Vec<String>> {
        let out = self.exec("ss", &["-Htn", "state", "established", filter])?;
        Ok(out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Number of established TCP connections whose LOCAL port is `port` (e.g. 15008 on the
    /// receiving node = HBONE connections accepted there).
    pub fn established_on_local_port(&self, port: u16) -> Result<usize> {
        Ok(self.established(&format!("( sport = :{port} )"))?.len())
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name()).finish()
    }
}

fn enter(path: &std::path::Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns({}): {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_only_parses_our_names() {
        assert_eq!(owner_pid("ntt123-4-n1"), Some(123));
        assert_eq!(owner_pid("ntt123-probe"), Some(123));
        assert_eq!(owner_pid("ntt-4-n1"), None);
        assert_eq!(owner_pid("nttx1-4"), None);
        assert_eq!(owner_pid("ntt123"), None);
        assert_eq!(owner_pid("cni-1234"), None);
        assert_eq!(owner_pid("ztunnel"), None);
    }
}
