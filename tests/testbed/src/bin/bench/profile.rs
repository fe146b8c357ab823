//! The optional profile step of `inpod --profile DIR`: `perf record` on each tunnel during one
//! extra single-stream iperf3 run, then the top of `perf report` per side.
//!
//! It runs after every measured run, so sampling never skews the figures of the table. The
//! profile is flat (self time per symbol, with its DSO): the release build has symbols
//! (`debug = 1`) but no frame pointers, so `-g` call chains would be unreliable, and the self
//! time is what says where the cycles go.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::BenchResult;

/// Samples per second per CPU.
const FREQUENCY: &str = "1999";
/// Symbols printed per side.
const TOP: usize = 25;

/// `perf record` attached to one process until [`Recording::finish`].
pub struct Recording {
    child: Child,
    data: PathBuf,
    label: String,
}

/// Starts `perf record` on `pid` for `seconds`, writing `dir/<label>.perf.data`.
pub fn record(dir: &Path, label: &str, pid: u32, seconds: u32) -> BenchResult<Recording> {
    if Command::new("perf").arg("--version").output().is_err() {
        return Err("--profile needs perf (Debian package linux-perf)".into());
    }
    std::fs::create_dir_all(dir)?;
    let data = dir.join(format!("{label}.perf.data"));
    let child = Command::new("perf")
        .args(["record", "-F", FREQUENCY, "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Recording {
        child,
        data,
        label: label.to_string(),
    })
}

impl Recording {
    /// Waits for the recording to end; writes the full report next to the data and returns
    /// the top [`TOP`] lines of it.
    pub fn finish(mut self) -> BenchResult<String> {
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("perf record for {} failed: {status}", self.label).into());
        }
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,symbol",
                "-i",
            ])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        std::fs::write(self.data.with_extension("txt"), &report)?;
        let top: Vec<&str> = report
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            // Columns perf has nothing for (no source lines) are printed as "-".
            .map(|l| l.trim_end().trim_end_matches([' ', '-']))
            .take(TOP)
            .collect();
        Ok(format!(
            "profile of {} (self time, {} Hz; full report {}):\n{}",
            self.label,
            FREQUENCY,
            self.data.with_extension("txt").display(),
            top.join("\n")
        ))
    }
}
