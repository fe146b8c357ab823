//! The accept loop every listener of the workspace runs: take connections until the task is
//! dropped, hand each to the caller, and survive a failed accept.
//!
//! A failed `accept` is almost always the process being out of descriptors (EMFILE/ENFILE) or
//! the peer having given up before the accept (ECONNABORTED). Neither ends the listener; a
//! short pause keeps the loop from spinning on EMFILE while connections close and free
//! descriptors.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pause after a failed accept before the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A listening socket [`serve`] can take connections from.
pub trait Listener: Send + 'static {
    type Stream: Send + 'static;
    /// Who connected.
    type Peer: Send + 'static;
    fn accept_next(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept_next(&self) -> impl Future<Output = io::Result<(TcpStream, Self::Peer)>> + Send {
        self.accept()
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept_next(&self) -> impl Future<Output = io::Result<(UnixStream, Self::Peer)>> + Send {
        self.accept()
    }
}

/// Accepts connections on `listener` until the future is dropped, calling `handle` with each
/// one; `handle` typically spawns a task for it. A failed accept is logged with `name` (which
/// listener) and retried after `RETRY_PAUSE` (50 ms).
pub async fn serve<L, F>(listener: L, name: &'static str, mut handle: F)
where
    L: Listener,
    F: FnMut(L::Stream, L::Peer),
{
    loop {
        match listener.accept_next().await {
            Ok((stream, peer)) => handle(stream, peer),
            Err(error) => {
                tracing::warn!(listener = name, %error, "accept failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// A connection's place under [`serve_limited`]'s cap: hold it for as long as the
/// connection is served; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// How often a listener at its cap says so, at most.
const AT_CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// [`serve`] with at most `limit` connections served at once. A connection accepted while
/// `limit` are live is closed at once, and the listener logs (at most every 10 s) that it is
/// at its cap, so slow or silent clients can hold no more than `limit` descriptors of the
/// process — the tunnel's data path shares them.
pub async fn serve_limited<L, F>(listener: L, name: &'static str, limit: usize, mut handle: F)
where
    L: Listener,
    F: FnMut(L::Stream, L::Peer, Slot),
{
    let slots = Arc::new(Semaphore::new(limit));
    let mut last_warned: Option<Instant> = None;
    let mut refused = 0u64;
    serve(listener, name, move |stream, peer| {
        match slots.clone().try_acquire_owned() {
            Ok(permit) => handle(stream, peer, Slot(permit)),
            Err(_) => {
                drop(stream);
                refused += 1;
                if last_warned.is_none_or(|t| t.elapsed() >= AT_CAP_LOG_INTERVAL) {
                    last_warned = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        limit,
                        refused,
                        "at the connection cap: closed a new connection"
                    );
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests;
