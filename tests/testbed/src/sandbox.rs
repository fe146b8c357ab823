//! A pod sandbox as the CNI node agent sees a running pod under `/proc`: a long-lived process
//! inside the pod's network namespace whose cgroup path names the pod uid
//! (`…/<prefix>-kubepods/pod<uid>/`, like kubelet's cgroupfs layout). Tests use it so the
//! agent's real `/proc` scan finds pods that were running before they were enrolled.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};
use crate::netns::{self, Netns};

/// A `sleep` in the pod netns, moved into the pod's test cgroup. Dropping it kills the process
/// and removes the cgroup directories.
pub struct Sandbox {
    child: Child,
    /// `<root>/<prefix>-kubepods`, removed with everything under it.
    kubepods: PathBuf,
    pod_dir: PathBuf,
}

impl Sandbox {
    /// Starts the process in `ns` and puts it in `<cgroup root>/<prefix>-kubepods/pod<uid>`.
    pub fn start(ns: &Netns, prefix: &str, uid: &str) -> Result<Sandbox> {
        Sandbox::start_with(ns, prefix, uid, None)
    }

    /// Like [`start`](Self::start), with the process in the pid namespace of `init` (a
    /// node's pid 1): it shows in a /proc mounted for that namespace, as a pod's processes
    /// show in the node's /proc.
    pub fn start_in_pid_ns(ns: &Netns, prefix: &str, uid: &str, init: u32) -> Result<Sandbox> {
        Sandbox::start_with(ns, prefix, uid, Some(init))
    }

    fn start_with(ns: &Netns, prefix: &str, uid: &str, init: Option<u32>) -> Result<Sandbox> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_stale_cgroups);
        let root = cgroup_root()?;
        let kubepods = root.join(format!("{prefix}-kubepods"));
        let pod_dir = kubepods.join(format!("pod{uid}"));
        fs::create_dir_all(&pod_dir)
            .map_err(|e| Error::io(format!("creating cgroup {}", pod_dir.display()), e))?;
        let procs = pod_dir.join("cgroup.procs");
        let mut command = match init {
            None => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), "sleep", "infinity"]);
                c
            }
            // Into the cgroup before anything forks, so the process nsenter forks inside the
            // pid namespace inherits it.
            Some(init) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "echo $$ > \"$0\" && exec nsenter --target \"$1\" --pid -- ip netns exec \"$2\" sleep infinity",
                ])
                .arg(&procs)
                .arg(init.to_string())
                .arg(ns.name());
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting a sandbox process in {}", ns.name()), e))?;
        netns::register_pid(child.id() as i32);
        let sandbox = Sandbox {
            child,
            kubepods,
            pod_dir,
        };
        if init.is_none() {
            fs::write(&procs, sandbox.child.id().to_string())
                .map_err(|e| Error::io(format!("writing {}", procs.display()), e))?;
        }
        Ok(sandbox)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The cgroup directory named after the pod.
    pub fn cgroup(&self) -> &Path {
        &self.pod_dir
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Every process of the pod's cgroup, as nsenter's child lives on after nsenter.
        let procs = fs::read_to_string(self.pod_dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid != self.child.id() as i32 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A cgroup directory can be removed once it has no processes; the kernel needs a
        // moment to notice the killed process has left.
        for _ in 0..50 {
            if fs::remove_dir(&self.pod_dir).is_ok() || !self.pod_dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.kubepods);
    }
}

/// A cgroup hierarchy this process may create directories in: the cgroup2 mount (unified
/// or hybrid), else the v1 `pids` hierarchy.
fn cgroup_root() -> Result<PathBuf> {
    cgroup_roots()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("no cgroup2 or cgroup v1 pids hierarchy mounted".into()))
}

/// The hierarchies sandboxes may be put in, preferred first: cgroup2 mounts, then the v1
/// `pids` hierarchy.
fn cgroup_roots() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [_, dir, "cgroup2", ..] => v2.push(PathBuf::from(dir)),
            [_, dir, "cgroup", options, ..] if options.split(',').any(|o| o == "pids") => {
                v1.push(PathBuf::from(dir))
            }
            _ => {}
        }
    }
    v2.extend(v1);
    v2
}

/// Removes the empty `ntt<pid>-…-kubepods` cgroups a killed earlier run left behind (Ctrl-C
/// kills the sandboxes and deletes the namespaces, but nothing rmdirs their cgroups). Only
/// directories whose owner pid is gone; a cgroup with processes cannot be removed anyway.
pub fn sweep_stale_cgroups() {
    let roots = cgroup_roots();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = stale_owner(&name) else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            if let Ok(pods) = std::fs::read_dir(entry.path()) {
                for pod in pods.flatten() {
                    if pod.file_name().to_string_lossy().starts_with("pod") {
                        let _ = std::fs::remove_dir(pod.path());
                    }
                }
            }
            if std::fs::remove_dir(entry.path()).is_ok() {
                eprintln!(
                    "removed stale cgroup {} (owner pid {owner} is gone)",
                    entry.path().display()
                );
            }
        }
    }
}

/// `ntt<pid>-…-kubepods` (the test bed's naming) → the pid; anything else → `None`.
fn stale_owner(name: &str) -> Option<u32> {
    name.strip_suffix("-kubepods").and_then(netns::owner_pid)
}
