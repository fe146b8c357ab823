//! The `/proc` parsers on real-shaped text, including the awkward cases (a command name with
//! spaces and parentheses, an unlimited fd limit, missing or garbled lines), and the collector
//! on this very test process.

use super::*;

/// A `/proc/self/stat` line of a process named `a) b (c` (52 fields), with utime 250,
/// stime 50, 7 threads, started 12345 ticks after boot.
const STAT: &str =
    "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 \
     100000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";

#[test]
fn stat_fields_are_counted_from_the_last_parenthesis() {
    assert_eq!(
        parse_stat(STAT),
        Ok(Stat {
            utime_ticks: 250,
            stime_ticks: 50,
            threads: 7,
            start_ticks: 12345,
        })
    );
}

#[test]
fn a_truncated_or_garbled_stat_names_the_field() {
    let truncated = "1 (x) S 1 2 3";
    assert_eq!(
        parse_stat(truncated).unwrap_err().to_string(),
        "/proc/self/stat: no field 14 (utime)"
    );
    let garbled = STAT.replace(" 250 50 ", " x 50 ");
    assert_eq!(
        parse_stat(&garbled).unwrap_err().to_string(),
        "/proc/self/stat: field 14 (utime) is not a number: \"x\""
    );
    assert_eq!(
        parse_stat("no parenthesis").unwrap_err().to_string(),
        "/proc/self/stat: no ')' closing the command name"
    );
}

const STATUS: &str = "Name:\tnodetunnel\nVmPeak:\t  20000 kB\nVmSize:\t   18432 kB\n\
                      VmRSS:\t    5120 kB\nThreads:\t7\n";

#[test]
fn status_sizes_are_bytes() {
    assert_eq!(parse_status_bytes(STATUS, "VmRSS"), Ok(5120 * 1024));
    assert_eq!(parse_status_bytes(STATUS, "VmSize"), Ok(18432 * 1024));
    assert_eq!(
        parse_status_bytes(STATUS, "VmSwap")
            .unwrap_err()
            .to_string(),
        "/proc/self/status: no VmSwap line"
    );
    assert_eq!(
        parse_status_bytes("VmRSS:\t12 pages\n", "VmRSS")
            .unwrap_err()
            .to_string(),
        "/proc/self/status: VmRSS is not '<n> kB': \"12 pages\""
    );
}

const LIMITS: &str =
    "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n";

#[test]
fn the_fd_limit_is_the_soft_one_and_unlimited_is_none() {
    assert_eq!(parse_max_open_files(LIMITS), Ok(Some(1024)));
    let unlimited = LIMITS.replace("1024                 524288", "unlimited unlimited");
    assert_eq!(parse_max_open_files(&unlimited), Ok(None));
    assert_eq!(
        parse_max_open_files("Limit Soft Hard\n")
            .unwrap_err()
            .to_string(),
        "/proc/self/limits: no 'Max open files' line"
    );
}

#[test]
fn boot_time_comes_from_btime() {
    let text = "cpu  1 2 3 4\nintr 5\nbtime 1764800000\nprocesses 99\n";
    assert_eq!(parse_boot_time(text), Ok(1_764_800_000));
    assert!(parse_boot_time("cpu 1\n").is_err());
}

/// The value of an unlabelled sample `name` in the exposition.
fn value(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_collector_reports_this_process() {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    // Hold an extra fd so the count has something to show.
    let _held = std::fs::File::open("/proc/self/stat").unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    assert!(value(&text, "process_cpu_seconds_total") >= 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(
        value(&text, "process_virtual_memory_bytes")
            >= value(&text, "process_resident_memory_bytes")
    );
    let open = value(&text, "process_open_fds");
    let here = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64 - 1.0;
    // Other test threads may open or close files meanwhile; this one holds at least three
    // (stdin, stdout, stderr) plus `_held`.
    assert!(
        open >= 4.0 && here >= 4.0,
        "open fds {open}, listing {here}"
    );
    assert!(value(&text, "process_threads") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&text, "process_start_time_seconds");
    assert!(
        started > now - 86_400.0 * 365.0 && started <= now + 1.0,
        "started {started}"
    );
}
