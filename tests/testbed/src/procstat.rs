//! Resource usage of a process from `/proc/<pid>`: open fds, threads, CPU time, memory. For
//! leak checks (fds and threads per pod added/removed) and the benchmark's CPU/RSS columns.

use std::fs;
use std::sync::OnceLock;

use nix::unistd::{sysconf, SysconfVar};

use crate::error::{Error, Result};

/// A snapshot of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStats {
    /// Entries of `/proc/<pid>/fd`.
    pub fds: usize,
    /// Entries of `/proc/<pid>/task`.
    pub threads: usize,
    /// utime + stime of `/proc/<pid>/stat`, in seconds.
    pub cpu_seconds: f64,
    /// `VmRSS` of `/proc/<pid>/status`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS) of `/proc/<pid>/status`, KiB.
    pub hwm_kib: u64,
}

impl ProcStats {
    /// Reads all fields for `pid` (fails if the process is gone).
    pub fn read(pid: u32) -> Result<ProcStats> {
        let (rss_kib, hwm_kib) = memory_kib(pid)?;
        Ok(ProcStats {
            fds: fd_count(pid)?,
            threads: thread_count(pid)?,
            cpu_seconds: cpu_seconds(pid)?,
            rss_kib,
            hwm_kib,
        })
    }
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    count_entries(&format!("/proc/{pid}/fd"))
}

/// Number of threads of `pid`.
pub fn thread_count(pid: u32) -> Result<usize> {
    count_entries(&format!("/proc/{pid}/task"))
}

/// CPU time (user + system) `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        Error::Invalid(format!("cannot parse utime/stime in {path}: {stat:.200}"))
    })?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    let field = |key| {
        parse_status_kib(&status, key)
            .ok_or_else(|| Error::Invalid(format!("no {key} in {path} (a zombie?)")))
    };
    Ok((field("VmRSS")?, field("VmHWM")?))
}

/// `sysconf(_SC_CLK_TCK)`, the unit of utime/stime (100 on every usual Linux; also the
/// fallback if sysconf cannot tell).
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is parenthesised and may contain spaces and `)`, so fields are counted after
/// the LAST `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The value of a `Key:   123 kB` line of `/proc/<pid>/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

fn count_entries(dir: &str) -> Result<usize> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("listing {dir}"), e))?;
    Ok(entries.filter(|e| e.is_ok()).count())
}

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(format!("reading {path}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    123 45 0 0 20 0 7 0 100 12345678 900 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(168));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 0"), None);
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tnodetunnel\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_has_fds_threads_and_memory() {
        let stats = ProcStats::read(std::process::id()).unwrap();
        assert!(stats.fds >= 3, "{stats:?}");
        assert!(stats.threads >= 1, "{stats:?}");
        assert!(
            stats.rss_kib > 0 && stats.hwm_kib >= stats.rss_kib,
            "{stats:?}"
        );
        assert!(stats.cpu_seconds >= 0.0);
        assert!(clock_ticks_per_second() > 0);
    }
}
