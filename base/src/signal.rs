//! The shutdown signals every long-running binary of the workspace stops on.
//!
//! [`shutdown`] registers the handlers when it is called, not when the future is first
//! polled: a SIGTERM that arrives while the process is still starting (loading config,
//! waiting for the first xDS sync) is then queued for the future instead of killing the
//! process with the default action before it could drain.

use std::fmt;
use std::future::Future;
use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the kubelet (or systemd) stopping the process.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl Signal {
    /// The number, for the conventional exit status 128 + signal.
    pub fn number(self) -> i32 {
        match self {
            Signal::Terminate => nix::libc::SIGTERM,
            Signal::Interrupt => nix::libc::SIGINT,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Registers SIGTERM and SIGINT handlers now and returns a future that completes with the
/// first of them to arrive. Must be called inside a tokio runtime; fails only if the handlers
/// cannot be installed.
pub fn shutdown() -> io::Result<impl Future<Output = Signal> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        // `recv` yields `None` only once the runtime's signal driver is gone, i.e. never
        // while this future can still be polled; such a stream is treated as never firing.
        tokio::select! {
            Some(()) = term.recv() => Signal::Terminate,
            Some(()) = int.recv() => Signal::Interrupt,
            else => std::future::pending().await,
        }
    })
}

#[cfg(test)]
mod tests;
