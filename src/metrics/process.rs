//! The standard `process_*` metrics of the tunnel itself, read from `/proc/self` at each
//! scrape. prometheus-client has no process collector; these are the names and units the
//! Prometheus client libraries use, so node and pod dashboards read them unchanged.
//!
//! Nothing here runs on the data path: a scrape reads four small files and lists the fd
//! directory. A file that cannot be read or parsed leaves its metrics out of that scrape
//! (logged at debug), never fails the scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Why a `/proc` file did not give a value: which file, and what was wrong with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ProcError {
    pub file: &'static str,
    pub reason: String,
}

fn malformed(file: &'static str, reason: impl Into<String>) -> ProcError {
    ProcError {
        file,
        reason: reason.into(),
    }
}

/// The fields of `/proc/self/stat` the metrics use, in the kernel's units (clock ticks).
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u64,
    /// When the process started, in ticks after boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    const FILE: &str = "/proc/self/stat";
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or_else(|| malformed(FILE, "no ')' closing the command name"))?;
    // rest starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize, name: &str| -> Result<u64, ProcError> {
        let raw = fields
            .get(n - 3)
            .ok_or_else(|| malformed(FILE, format!("no field {n} ({name})")))?;
        raw.parse()
            .map_err(|_| malformed(FILE, format!("field {n} ({name}) is not a number: {raw:?}")))
    };
    Ok(Stat {
        utime_ticks: field(14, "utime")?,
        stime_ticks: field(15, "stime")?,
        threads: field(20, "num_threads")?,
        start_ticks: field(22, "starttime")?,
    })
}

/// A `<key>: <n> kB` line of `/proc/self/status` (`VmRSS`, `VmSize`), in bytes.
pub fn parse_status_bytes(text: &str, key: &str) -> Result<u64, ProcError> {
    const FILE: &str = "/proc/self/status";
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| malformed(FILE, format!("no {key} line")))?;
    let kib = line
        .trim()
        .strip_suffix("kB")
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| malformed(FILE, format!("{key} is not '<n> kB': {:?}", line.trim())))?;
    Ok(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when unlimited.
pub fn parse_max_open_files(text: &str) -> Result<Option<u64>, ProcError> {
    const FILE: &str = "/proc/self/limits";
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| malformed(FILE, "no 'Max open files' line"))?;
    match line.split_whitespace().next() {
        Some("unlimited") => Ok(None),
        Some(n) => n
            .parse()
            .map(Some)
            .map_err(|_| malformed(FILE, format!("soft limit is not a number: {n:?}"))),
        None => Err(malformed(FILE, "'Max open files' has no value")),
    }
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the Unix epoch.
pub fn parse_boot_time(text: &str) -> Result<u64, ProcError> {
    const FILE: &str = "/proc/stat";
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .ok_or_else(|| malformed(FILE, "no btime line"))?;
    value
        .trim()
        .parse()
        .map_err(|_| malformed(FILE, format!("btime is not a number: {value:?}")))
}

fn read(file: &'static str) -> Result<String, ProcError> {
    std::fs::read_to_string(file).map_err(|e| malformed(file, e.to_string()))
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
fn open_fds() -> Result<u64, ProcError> {
    const DIR: &str = "/proc/self/fd";
    let entries = std::fs::read_dir(DIR).map_err(|e| malformed(DIR, e.to_string()))?;
    Ok((entries.count() as u64).saturating_sub(1))
}

/// Clock ticks per second, the unit of `/proc/self/stat`'s times.
fn ticks_per_second() -> Result<u64, ProcError> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => Ok(n as u64),
        other => Err(malformed("sysconf(_SC_CLK_TCK)", format!("{other:?}"))),
    }
}

/// One scrape's values; each is `None` when its source could not be read.
#[derive(Debug, Default)]
struct Sample {
    cpu_seconds: Option<f64>,
    threads: Option<u64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// Keeps the value, or logs why there is none (at debug: a scrape every few seconds must not
/// flood the log with the same complaint).
fn keep<T>(value: Result<T, ProcError>) -> Option<T> {
    value
        .map_err(|e| tracing::debug!(error = %e, "process metric left out of this scrape"))
        .ok()
}

impl Sample {
    fn read() -> Sample {
        let ticks = keep(ticks_per_second());
        let stat = keep(read("/proc/self/stat").and_then(|t| parse_stat(&t)));
        let status = keep(read("/proc/self/status"));
        let boot = keep(read("/proc/stat").and_then(|t| parse_boot_time(&t)));
        let status_bytes = |key| {
            status
                .as_deref()
                .and_then(|t| keep(parse_status_bytes(t, key)))
        };
        Sample {
            cpu_seconds: stat
                .as_ref()
                .zip(ticks)
                .map(|(s, t)| (s.utime_ticks + s.stime_ticks) as f64 / t as f64),
            threads: stat.as_ref().map(|s| s.threads),
            start_time_seconds: stat
                .as_ref()
                .zip(ticks)
                .zip(boot)
                .map(|((s, t), b)| b as f64 + s.start_ticks as f64 / t as f64),
            resident_bytes: status_bytes("VmRSS"),
            virtual_bytes: status_bytes("VmSize"),
            open_fds: keep(open_fds()),
            max_fds: keep(read("/proc/self/limits").and_then(|t| parse_max_open_files(&t)))
                .flatten(),
        }
    }
}

/// Registered once per registry; reads `/proc/self` when scraped.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(cpu) = s.cpu_seconds {
            ConstCounter::new(cpu).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?)?;
        }
        let whole = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let gauges: [(&str, &str, Option<i64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                whole(s.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                whole(s.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                whole(s.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                whole(s.max_fds),
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                whole(s.threads),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                ConstGauge::new(value).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some(started) = s.start_time_seconds {
            ConstGauge::new(started).encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
