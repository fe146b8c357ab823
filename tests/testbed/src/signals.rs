//! Cleanup on Ctrl-C / SIGTERM for the long-running binaries (demo, bench).
//!
//! Handlers, not a blocked mask + `sigwait`: a blocked mask would be inherited by the tunnel
//! processes we start (std does not reset it before `exec`), and they would ignore SIGTERM.

use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, kills the test bed's child processes,
/// deletes its namespaces ([`cleanup_all`](crate::cleanup_all)) and exits with 128 + signal.
pub fn cleanup_on_signals() {
    let Ok(mut signals) = Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        eprintln!("testbed: cannot install signal handlers; Ctrl-C will not clean up");
        return;
    };
    thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("\nsignal {sig} received: cleaning up namespaces and processes");
            crate::cleanup_all();
            std::process::exit(128 + sig);
        }
    });
}
