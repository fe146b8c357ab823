//! Sharing HBONE connections between CONNECT streams.
//!
//! A connection is reused only by streams with the same key: source identity and IP,
//! destination tunnel address, and the identities the destination may present. Connections are
//! therefore never shared across source identities. Each connection carries at most
//! `max_streams_per_connection` streams; when all are full the pool opens another. A connection
//! that has carried no stream for `idle_timeout` is closed by a sweeper.
//!
//! Opening a connection happens under the key's lock, so a burst of new streams to the same
//! destination waits for one handshake instead of racing to open one connection each. The pool
//! opens connections with its own [`Connector`], so every connection of one pool comes from the
//! same certificate source and socket factory (in shared mode: the same pod's namespace).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::gauge::Gauge;

use super::client::{ClientError, Connection};
use super::connector::{ConnectError, Connector};
use super::stream::H2Stream;
use crate::config::PoolConfig;
use crate::identity::Identity;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source_identity: Identity,
    pub source_ip: IpAddr,
    /// The peer tunnel's HBONE address (`<workload ip>:15008`).
    pub destination: SocketAddr,
    /// Identities the peer may present, sorted so equal sets give equal keys.
    pub expected_identities: Vec<Identity>,
}

impl PoolKey {
    pub fn new(
        source_identity: Identity,
        source_ip: IpAddr,
        destination: SocketAddr,
        mut expected_identities: Vec<Identity>,
    ) -> PoolKey {
        expected_identities.sort();
        expected_identities.dedup();
        PoolKey {
            source_identity,
            source_ip,
            destination,
            expected_identities,
        }
    }
}

/// Why the pool could not hand out a stream.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No pooled connection had room and a new one could not be opened.
    #[error("opening an HBONE connection: {0}")]
    Connect(#[from] ConnectError),
    /// The connection is up but the CONNECT stream failed or was refused.
    #[error(transparent)]
    Stream(#[from] ClientError),
    /// The peer gave no stream capacity or no answer to the CONNECT within
    /// `CONNECTION_TIMEOUT`; the connection is no longer handed out.
    #[error("peer {peer} did not answer CONNECT to {authority} within {after:?}")]
    StreamTimeout {
        peer: SocketAddr,
        authority: SocketAddr,
        after: Duration,
    },
}

/// What the pool reports to `/metrics`: connections it holds and streams open on them. Plain
/// atomic gauges moved when a connection or stream comes and goes, so a scrape reads them
/// without touching the pool's locks and the data path pays one atomic add per stream.
#[derive(Clone, Debug, Default)]
pub struct PoolGauges {
    /// Connections held by the pool (counted until the last stream on them ends and the pool
    /// lets go of them: at the next open on their key or the next sweep once closed).
    pub connections: Gauge,
    /// CONNECT streams open (or being opened) on pooled connections.
    pub streams: Gauge,
}

struct PooledConnection {
    connection: Connection,
    active_streams: AtomicUsize,
    /// When the last stream ended (meaningful while `active_streams` is 0).
    idle_since: Mutex<Instant>,
    gauges: PoolGauges,
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        self.gauges.connections.dec();
    }
}

impl PooledConnection {
    /// Counts the connection as held from now until it is dropped.
    fn new(connection: Connection, gauges: PoolGauges) -> PooledConnection {
        gauges.connections.inc();
        PooledConnection {
            connection,
            // The stream the connection was opened for.
            active_streams: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
            gauges,
        }
    }

    /// Claims a stream slot if one is free.
    fn try_acquire(&self, max: usize) -> bool {
        self.active_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        if self.active_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active_streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }
}

/// Returns the stream's slot to its connection when the stream is dropped.
struct StreamSlot(Arc<PooledConnection>);

impl StreamSlot {
    /// Takes over a slot already claimed on `connection`, counting the stream as open.
    fn new(connection: Arc<PooledConnection>) -> StreamSlot {
        connection.gauges.streams.inc();
        StreamSlot(connection)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.gauges.streams.dec();
        self.0.release();
    }
}

/// How many times a stream refused unprocessed is sent again. Each refusal takes its
/// connection out of the pool, so a retry goes to another pooled connection or a new one; the
/// bound keeps a peer that refuses every stream from being retried forever.
const UNPROCESSED_RETRIES: usize = 3;

type Slot = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

struct Inner {
    config: PoolConfig,
    connector: Connector,
    gauges: PoolGauges,
    slots: Mutex<HashMap<PoolKey, Slot>>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Creates the pool, which opens its connections with `connector` and counts them and
    /// their streams in `gauges` (shared by every pool of the process), and starts its idle
    /// sweeper (which ends when the pool is dropped). Needs a tokio runtime.
    pub fn new(config: PoolConfig, connector: Connector, gauges: PoolGauges) -> Pool {
        let inner = Arc::new(Inner {
            config,
            connector,
            gauges,
            slots: Mutex::new(HashMap::new()),
        });
        let sweep_every = (inner.config.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::spawn(sweep(Arc::downgrade(&inner), sweep_every));
        Pool { inner }
    }

    fn slot(&self, key: &PoolKey) -> Slot {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Opens a CONNECT stream to `authority`, reusing a connection of `key` with a free stream
    /// slot, or opening one with the pool's connector. A stream the peer refused unprocessed
    /// (it is draining: GOAWAY) is tried again on another connection, which the pool opens
    /// since the refusing one is no longer handed out: the peer's replacement takes it.
    pub async fn open_stream(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        forwarded_for: Option<IpAddr>,
    ) -> Result<H2Stream, PoolError> {
        let mut retries = 0;
        loop {
            match self.open_stream_once(key, authority, forwarded_for).await {
                Err(PoolError::Stream(e))
                    if e.is_unprocessed() && retries < UNPROCESSED_RETRIES =>
                {
                    retries += 1;
                    tracing::debug!(peer = %key.destination, error = %e, retries, "stream refused unprocessed; retrying on another connection");
                }
                other => return other,
            }
        }
    }

    async fn open_stream_once(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        forwarded_for: Option<IpAddr>,
    ) -> Result<H2Stream, PoolError> {
        let max = self.inner.config.max_streams_per_connection;
        let slot = self.slot(key);
        let pooled = {
            let mut connections = slot.lock().await;
            // A connection whose certificates expired takes no new streams (its open ones
            // carry on, holding it): the next stream gets a new handshake with fresh ones.
            let now = SystemTime::now();
            connections.retain(|c| !c.connection.is_closed() && c.connection.usable_at(now));
            match connections.iter().find(|c| c.try_acquire(max)) {
                Some(c) => c.clone(),
                None => {
                    // Boxed: the handshake's state is large and over once it is done (see
                    // `proxy::connect`).
                    let connection = Box::pin(self.inner.connector.connect(key)).await?;
                    tracing::debug!(peer = %key.destination, source = %key.source_identity, "opened HBONE connection");
                    let pooled =
                        Arc::new(PooledConnection::new(connection, self.inner.gauges.clone()));
                    connections.push(pooled.clone());
                    pooled
                }
            }
        };
        let guard = StreamSlot::new(pooled.clone());
        // Waiting for stream capacity and for the peer's answer counts against the same
        // timeout as dialing: a peer that accepted TLS and HTTP/2 but never answers must not
        // hold the client's connection (dropping the request resets the stream).
        let after = self.inner.connector.timeout();
        let connect = Box::pin(pooled.connection.connect_stream(authority, forwarded_for));
        let stream = match tokio::time::timeout(after, connect).await {
            Ok(stream) => stream?,
            Err(_) => {
                pooled.connection.retire();
                return Err(PoolError::StreamTimeout {
                    peer: key.destination,
                    authority,
                    after,
                });
            }
        };
        Ok(stream.with_guard(Box::new(guard)))
    }

    /// Open connections for `key`.
    #[cfg(test)]
    pub fn connections(&self, key: &PoolKey) -> usize {
        let slot = self.slot(key);
        let count = slot
            .try_lock()
            .map(|c| c.iter().filter(|c| !c.connection.is_closed()).count())
            .unwrap_or(0);
        count
    }

    /// Open connections across all keys.
    #[cfg(test)]
    pub fn total_connections(&self) -> usize {
        let slots: Vec<Slot> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|s| s.try_lock().ok().map(|c| c.len()))
            .sum()
    }
}

/// Closes connections idle for longer than the timeout; ends when the pool is gone.
async fn sweep(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let timeout = inner.config.idle_timeout;
        let mut slots = inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| {
            // A slot being used right now is simply looked at next time.
            let Ok(mut connections) = slot.try_lock() else {
                return true;
            };
            connections.retain(|c| {
                !c.connection.is_closed() && c.idle_for().is_none_or(|idle| idle < timeout)
            });
            !connections.is_empty()
        });
    }
}

#[cfg(test)]
mod tests;
