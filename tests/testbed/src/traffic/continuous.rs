//! Traffic that never stops while a test replaces the parts under it: loops opening a new
//! connection after another (a known payload each, its echo checked), and long streams moving
//! data without pause, every byte checked against a [`Pattern`]. Upgrade and restart tests
//! start it, disturb the mesh, then stop it and assert that nothing failed and no byte was
//! lost or changed.
//!
//! Every client runs on its own thread inside the client pod's namespace, against an echo
//! server ([`super::echo_handler`]). A failure is recorded with what failed and why; the
//! traffic goes on, so one report holds every failure of a run.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{connect_from, Pattern};
use crate::netns::Netns;

/// Bytes in one short connection's payload (after its `<loop>-<seq>` label).
const SHORT_PAYLOAD: usize = 512;
/// Bytes a long stream writes, then reads back, per round.
const LONG_CHUNK: usize = 16 * 1024;
/// Pause between two short connections of one loop and between two rounds of a long stream:
/// a steady load (about a hundred connections per second per loop) that leaves CPU for the
/// tunnels on a small machine.
const PAUSE: Duration = Duration::from_millis(5);
/// Read/write timeout of every client socket: a stalled connection is a failure, not a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// What to run: from `src` inside `ns` to the echo server at `dst`.
#[derive(Clone)]
pub struct TrafficSpec {
    pub ns: Netns,
    pub src: Ipv4Addr,
    pub dst: SocketAddr,
    /// Loops each opening one short connection after another.
    pub short_loops: usize,
    /// Long streams, each one connection for the whole run.
    pub long_streams: usize,
}

/// Counters shared with the client threads.
#[derive(Default)]
struct Shared {
    stop_short: AtomicBool,
    stop_long: AtomicBool,
    short_ok: AtomicU64,
    short_bytes: AtomicU64,
    long_bytes: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// Running traffic. Dropping it stops every client (without a report).
pub struct ContinuousTraffic {
    shared: Arc<Shared>,
    short: Vec<JoinHandle<()>>,
    long: Vec<JoinHandle<LongOutcome>>,
    /// Outcomes of long streams already finished ([`finish_long`](Self::finish_long)).
    finished: Vec<LongOutcome>,
}

/// How one long stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongOutcome {
    /// Bytes written, echoed back and found equal to the pattern.
    pub verified: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Everything a run did.
#[derive(Debug, Clone)]
pub struct TrafficReport {
    /// Short connections that opened, echoed their payload exactly and closed cleanly.
    pub short_ok: u64,
    /// Payload bytes those connections had echoed and verified.
    pub short_bytes: u64,
    /// Each long stream's outcome.
    pub long: Vec<LongOutcome>,
    /// Every failure: short connections and long streams.
    pub failures: Vec<String>,
}

impl TrafficReport {
    /// Bytes verified on the long streams, together.
    pub fn long_bytes(&self) -> u64 {
        self.long.iter().map(|l| l.verified).sum()
    }
}

impl std::fmt::Display for TrafficReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} short connections ({} bytes echoed and verified), {} long streams ({} bytes \
             verified), {} failures",
            self.short_ok,
            self.short_bytes,
            self.long.len(),
            self.long_bytes(),
            self.failures.len()
        )
    }
}

impl ContinuousTraffic {
    /// Opens the long streams (an error if one cannot be opened: the mesh was not working to
    /// begin with), then starts every client.
    pub fn start(spec: &TrafficSpec) -> io::Result<ContinuousTraffic> {
        let shared = Arc::new(Shared::default());
        let mut long = Vec::new();
        for n in 0..spec.long_streams {
            let (src, dst) = (spec.src, spec.dst);
            let stream = spec.ns.run(move || connect_from(src, dst))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            let shared = shared.clone();
            long.push(thread::spawn(move || long_stream(n, stream, &shared)));
        }
        let short = (0..spec.short_loops)
            .map(|n| {
                let (src, dst, shared) = (spec.src, spec.dst, shared.clone());
                spec.ns.spawn(move || short_loop(n, src, dst, &shared))
            })
            .collect();
        Ok(ContinuousTraffic {
            shared,
            short,
            long,
            finished: Vec::new(),
        })
    }

    /// Short connections that succeeded so far (for waiting on progress).
    pub fn short_ok(&self) -> u64 {
        self.shared.short_ok.load(Ordering::Relaxed)
    }

    /// Bytes the long streams verified so far.
    pub fn long_bytes(&self) -> u64 {
        self.shared.long_bytes.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.shared
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the long streams (each half-closes after its last round, then expects the echo
    /// server's EOF) and returns their outcomes (the report has them too); the short loops
    /// keep going.
    pub fn finish_long(&mut self) -> Vec<LongOutcome> {
        self.shared.stop_long.store(true, Ordering::Relaxed);
        let outcomes: Vec<LongOutcome> = self
            .long
            .drain(..)
            .map(|t| {
                t.join().unwrap_or_else(|_| LongOutcome {
                    verified: 0,
                    error: Some("the stream's thread panicked".into()),
                })
            })
            .collect();
        self.finished.extend(outcomes.iter().cloned());
        outcomes
    }

    /// Stops every client, waits for them and reports.
    pub fn stop(mut self) -> TrafficReport {
        self.finish_long();
        let long = std::mem::take(&mut self.finished);
        self.shared.stop_short.store(true, Ordering::Relaxed);
        for t in self.short.drain(..) {
            if t.join().is_err() {
                self.shared.fail("a short-connection loop panicked".into());
            }
        }
        TrafficReport {
            short_ok: self.short_ok(),
            short_bytes: self.shared.short_bytes.load(Ordering::Relaxed),
            long,
            failures: self.failures(),
        }
    }
}

impl Drop for ContinuousTraffic {
    fn drop(&mut self) {
        self.shared.stop_long.store(true, Ordering::Relaxed);
        self.shared.stop_short.store(true, Ordering::Relaxed);
    }
}

/// One short connection after another until told to stop; runs inside the pod's namespace.
fn short_loop(n: usize, src: Ipv4Addr, dst: SocketAddr, shared: &Shared) {
    let mut seq: u64 = 0;
    while !shared.stop_short.load(Ordering::Relaxed) {
        seq += 1;
        // Label plus pattern bytes unique to (loop, seq): an echo from another connection, or
        // a stale one, cannot match.
        let mut payload = format!("{n}-{seq}-").into_bytes();
        payload.extend_from_slice(&Pattern::new((n as u64) << 32 | seq).bytes(SHORT_PAYLOAD));
        match short_connection(src, dst, &payload) {
            Ok(()) => {
                shared.short_ok.fetch_add(1, Ordering::Relaxed);
                shared
                    .short_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            Err(e) => shared.fail(format!("short connection {n}-{seq}: {e}")),
        }
        thread::sleep(PAUSE);
    }
}

/// Connect, send `payload`, half-close, and expect exactly `payload` back, then EOF.
fn short_connection(src: Ipv4Addr, dst: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let mut stream = connect_from(src, dst)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(payload)?;
    stream.shutdown(Shutdown::Write)?;
    let mut echoed = Vec::with_capacity(payload.len());
    stream.read_to_end(&mut echoed)?;
    if echoed != payload {
        return Err(io::Error::other(format!(
            "echo differs: sent {} bytes, got {}",
            payload.len(),
            echoed.len()
        )));
    }
    Ok(())
}

/// Rounds of "write a chunk of the pattern, read it back, compare" until told to stop; then a
/// half-close and the server's EOF.
fn long_stream(n: usize, mut stream: TcpStream, shared: &Shared) -> LongOutcome {
    let pattern = Pattern::new(0x1000 + n as u64);
    let mut verified = 0u64;
    let (mut chunk, mut echoed) = (vec![0; LONG_CHUNK], vec![0; LONG_CHUNK]);
    let mut round = || -> io::Result<()> {
        // The pattern at this stream offset: a lost, repeated or reordered byte anywhere
        // shifts every later one.
        pattern.fill(verified, &mut chunk);
        stream.write_all(&chunk)?;
        stream.read_exact(&mut echoed)?;
        if let Some(at) = (0..LONG_CHUNK).find(|&i| echoed[i] != chunk[i]) {
            return Err(io::Error::other(format!(
                "echoed byte at offset {} differs",
                verified + at as u64
            )));
        }
        verified += LONG_CHUNK as u64;
        shared
            .long_bytes
            .fetch_add(LONG_CHUNK as u64, Ordering::Relaxed);
        Ok(())
    };
    let mut result = Ok(());
    while result.is_ok() && !shared.stop_long.load(Ordering::Relaxed) {
        result = round();
        thread::sleep(PAUSE);
    }
    let result = result.and_then(|()| {
        stream.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
        if rest.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{} unexpected bytes after the half-close",
                rest.len()
            )))
        }
    });
    let error = result.err().map(|e| {
        let what = format!("long stream {n} after {verified} verified bytes: {e}");
        shared.fail(what.clone());
        what
    });
    LongOutcome { verified, error }
}
