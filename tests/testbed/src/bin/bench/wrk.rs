//! `wrk --latency` in a namespace and the figures of its text report.

use std::net::SocketAddr;
use std::time::Duration;

use nodetunnel_testbed::Netns;

use crate::BenchResult;

/// Latency percentiles and rate of one wrk run.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub p50: Duration,
    pub p99: Duration,
    pub requests_per_second: f64,
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency http://<dst>/` inside `ns`.
pub fn run(ns: &Netns, dst: SocketAddr, connections: u32, seconds: u32) -> BenchResult<Report> {
    let out = ns.exec(
        "wrk",
        &[
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{dst}/"),
        ],
    )?;
    parse(&out).ok_or_else(|| format!("cannot read wrk's report:\n{out}").into())
}

fn parse(out: &str) -> Option<Report> {
    if out.contains("Socket errors") || out.contains("Non-2xx") {
        return None;
    }
    let value = |label: &str| {
        out.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == label).then(|| words.next())?
        })
    };
    Some(Report {
        p50: duration(value("50%")?)?,
        p99: duration(value("99%")?)?,
        requests_per_second: value("Requests/sec:")?.parse().ok()?,
    })
}

/// wrk's `48.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 10s test @ http://10.77.2.10:8081/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.34us   20.11us   1.23ms   95.00%
    Req/Sec    18.21k     1.02k   19.50k    80.00%
  Latency Distribution
     50%   48.00us
     75%   52.00us
     90%   60.00us
     99%    1.20ms
  182345 requests in 10.10s, 14.26MB read
Requests/sec:  18054.20
Transfer/sec:      1.41MB
";

    #[test]
    fn reads_percentiles_and_rate() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.p50, Duration::from_micros(48));
        assert_eq!(r.p99, Duration::from_micros(1200));
        assert_eq!(r.requests_per_second, 18054.20);
    }

    #[test]
    fn errors_make_the_report_unusable() {
        let broken = REPORT.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:",
        );
        assert!(parse(&broken).is_none());
        assert_eq!(duration("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(duration("abc"), None);
    }
}
