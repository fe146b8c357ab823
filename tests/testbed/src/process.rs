//! A daemon process started inside a namespace (`ip netns exec`), with its stdout and stderr in
//! a log file. Tunnels and control planes are both one of these.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::tunnel::strip_ansi;

/// How long a process gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

const LOG_TAIL_LINES: usize = 60;

/// A running process. Dropping it sends SIGTERM, then SIGKILL after [`TERM_GRACE`]; if the
/// current thread is panicking, its log tail is printed to stderr (the test's output).
pub struct NsProcess {
    /// What it is, for messages ("tunnel", "control plane").
    label: &'static str,
    ns: Netns,
    child: Option<Child>,
    log_path: PathBuf,
}

impl NsProcess {
    /// Runs `ip netns exec <ns> <bin> <args>` with `env` added to this process's environment,
    /// stdout and stderr written to `log_path` (truncated).
    pub fn spawn(
        label: &'static str,
        ns: &Netns,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_path: &Path,
    ) -> Result<NsProcess> {
        NsProcess::spawn_with(label, ns, bin, args, env, EnvMode::Inherit, log_path)
    }

    /// [`spawn`](Self::spawn), with the environment chosen by `mode`: [`EnvMode::Exact`]
    /// starts `bin` with `env` and nothing else, so a variable exported in the shell that runs
    /// the tests cannot change what is being tested (a `PROXY_MODE` there would hide the
    /// default).
    pub fn spawn_with(
        label: &'static str,
        ns: &Netns,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        mode: EnvMode,
        log_path: &Path,
    ) -> Result<NsProcess> {
        let log = File::create(log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        let mut command = Command::new(match mode {
            EnvMode::Inherit => PathBuf::from("ip"),
            // Found now: the child's PATH is gone once the environment is cleared.
            EnvMode::Exact => find_in_path("ip")?,
        });
        if mode == EnvMode::Exact {
            command.env_clear();
        }
        command
            .args(["netns", "exec", ns.name()])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {} in {}", bin.display(), ns.name()), e))?;
        netns::register_pid(child.id() as i32);
        Ok(NsProcess {
            label,
            ns: ns.clone(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        })
    }

    /// The daemon's pid (the `ip netns exec` process execs it, so they are the same).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far, ANSI colour codes removed.
    pub fn log(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The last `n` lines of [`log`](Self::log).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The default tail length for error messages.
    pub fn default_tail(&self) -> String {
        self.log_tail(LOG_TAIL_LINES)
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|e| Error::io(format!("polling the {} process", self.label), e)),
            None => Ok(None),
        }
    }

    /// SIGTERM, wait up to [`TERM_GRACE`], then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal_and_reap(Signal::SIGTERM, TERM_GRACE)
    }

    /// SIGKILL at once (a crash, not a shutdown). Returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal_and_reap(Signal::SIGKILL, TERM_GRACE)
    }

    fn signal_and_reap(&mut self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id() as i32;
        if let Ok(Some(status)) = child.try_wait() {
            // Already reaped: the pid may belong to someone else now, so no signals.
            netns::unregister_pid(pid);
            return Some(status);
        }
        let _ = signal::kill(Pid::from_raw(pid), sig);
        let end = Instant::now() + grace;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        netns::unregister_pid(pid);
        status
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.terminate();
        if thread::panicking() {
            // Not eprintln!: a closed stderr would panic again mid-unwind and abort.
            let _ = writeln!(
                std::io::stderr(),
                "--- {} log {} (netns {}, last {LOG_TAIL_LINES} lines) ---\n{}\n--- end ---",
                self.label,
                self.log_path.display(),
                self.ns.name(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

/// What environment a process starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvMode {
    /// This process's environment plus the given variables.
    Inherit,
    /// The given variables only.
    Exact,
}

/// `program` in one of this process's `PATH` directories.
fn find_in_path(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::Invalid(format!("{program} is not in PATH")))
}

/// `dir/<stem>-<n>.log` for the first `n` that does not exist yet.
pub(crate) fn fresh_log_path(dir: &Path, stem: &str) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("{stem}-{n}.log")))
        .find(|candidate| !candidate.exists())
        .expect("an unused log file name")
}
