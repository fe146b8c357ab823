//! Cleanup on Ctrl-C / SIGTERM for the long-running binaries (demo, bench).

use std::thread;

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in threads it starts later)
/// and starts a thread that waits for them, then kills the test bed's child processes, deletes
/// its namespaces ([`cleanup_all`](crate::cleanup_all)) and exits with 128 + signal.
///
/// Call it first thing in `main`, before any other thread exists. Child processes get a clean
/// signal mask (std resets it before `exec`).
pub fn cleanup_on_signals() {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    if set.thread_block().is_err() {
        return;
    }
    thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("\n{sig} received: cleaning up namespaces and processes");
            crate::cleanup_all();
            std::process::exit(128 + sig as i32);
        }
    });
}
