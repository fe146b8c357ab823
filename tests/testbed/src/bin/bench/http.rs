//! A tiny HTTP/1.1 server (`nodetunnel-bench http-serve <ip:port>`, hidden, started in a
//! namespace by [`start_server`]) and a connection-per-request client, both std only: one thread per connection, keep-alive unless
//! the request says `Connection: close`, a fixed 13-byte body.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use std::thread;
use std::time::{Duration, Instant};

use nodetunnel_testbed::{connect_from, Netns};

use crate::iperf::Reaped;
use crate::BenchResult;

const BODY: &[u8] = b"hello, mesh!\n";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forever on `addr` (the bench kills the process).
pub fn serve(addr: &str) -> BenchResult {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("http-serve {addr}: not an ip:port"))?;
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || {
            let _ = handle(stream);
        });
    }
    Ok(())
}

/// `nodetunnel-bench http-serve <addr>` inside `ns`, listening when this returns.
pub fn start_server(ns: &Netns, addr: SocketAddr) -> BenchResult<Reaped> {
    crate::serve_in(ns, "http-serve", addr)
}

/// Answers every request on `stream` (pipelining allowed) until the peer closes or asks to.
fn handle(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let close = wants_close(&buf[..end]);
            buf.drain(..end + 4);
            let connection = if close { "Connection: close\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n",
                BODY.len()
            );
            let mut response = head.into_bytes();
            response.extend_from_slice(BODY);
            stream.write_all(&response)?;
            if close {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a request head carries `Connection: close` (header name and value any case).
fn wants_close(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
        })
    })
}

/// One request on a fresh connection: connect, `GET /` with `Connection: close`, read the
/// whole response. Returns the time from before `connect` until the last response byte; the
/// server's close is then read outside the timing.
pub fn request_on_new_connection(dst: SocketAddr) -> io::Result<Duration> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    exchange(stream, started)
}

/// Like [`request_on_new_connection`], from source address `src` (bound before connecting, so
/// a dedicated-mode tunnel sees the pod address). Must run inside the node's namespace.
pub fn request_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<Duration> {
    let started = Instant::now();
    let stream = connect_from(src, dst)?;
    exchange(stream, started)
}

/// `GET /` with `Connection: close` on `stream`, the whole response read; the time since
/// `started`. The server's close is read outside the timing.
fn exchange(mut stream: TcpStream, started: Instant) -> io::Result<Duration> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&response, b"\r\n\r\n") {
            if response.len() >= end + 4 + BODY.len() {
                break;
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "response cut short: {:?}",
                    String::from_utf8_lossy(&response)
                ),
            ));
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let elapsed = started.elapsed();
    if !response.starts_with(b"HTTP/1.1 200 ") {
        return Err(io::Error::other(format!(
            "unexpected response {:?}",
            String::from_utf8_lossy(&response)
        )));
    }
    let _ = stream.read_to_end(&mut response);
    Ok(elapsed)
}

/// `warmup` untimed requests, then `count` timed ones, each on its own connection, one at a
/// time. Returns the timed latencies, sorted.
pub fn requests_on_new_connections(
    dst: SocketAddr,
    warmup: usize,
    count: usize,
) -> io::Result<Vec<Duration>> {
    for _ in 0..warmup {
        request_on_new_connection(dst)?;
    }
    let mut times = (0..count)
        .map(|_| request_on_new_connection(dst))
        .collect::<io::Result<Vec<_>>>()?;
    times.sort();
    Ok(times)
}

/// The `p`-th percentile (0–100) of sorted `times` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close_is_recognised_in_any_case() {
        assert!(wants_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nconnection:  Close"
        ));
        assert!(!wants_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive"
        ));
        assert!(!wants_close(b"GET /close HTTP/1.1\r\nHost: x"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&times, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&times, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&times, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&times[..1], 99.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
