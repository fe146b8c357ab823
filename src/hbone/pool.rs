//! Sharing HBONE connections between CONNECT streams.
//!
//! A connection is reused only by streams with the same key: source identity and IP,
//! destination tunnel address, and the identities the destination may present. Connections are
//! therefore never shared across source identities. Each connection carries at most
//! `max_streams_per_connection` streams; when all are full the pool opens another. A connection
//! that has carried no stream for `idle_timeout` is closed by a sweeper.
//!
//! Opening a connection happens under the key's lock, so a burst of new streams to the same
//! destination waits for one handshake instead of racing to open one connection each.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::client::{ClientError, Connection};
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

struct PooledConnection {
    connection: Connection,
    active_streams: AtomicUsize,
    /// When the last stream ended (meaningful while `active_streams` is 0).
    idle_since: Mutex<Instant>,
}

impl PooledConnection {
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

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

type Slot = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

struct Inner {
    config: PoolConfig,
    slots: Mutex<HashMap<PoolKey, Slot>>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Creates the pool and starts its idle sweeper (which ends when the pool is dropped).
    pub fn new(config: PoolConfig) -> Pool {
        let inner = Arc::new(Inner {
            config,
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
    /// slot, or opening one with `connect`.
    pub async fn open_stream<F, Fut, E>(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        forwarded_for: Option<IpAddr>,
        connect: F,
    ) -> Result<H2Stream, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, E>>,
        E: From<ClientError>,
    {
        let max = self.inner.config.max_streams_per_connection;
        let slot = self.slot(key);
        let pooled = {
            let mut connections = slot.lock().await;
            connections.retain(|c| !c.connection.is_closed());
            match connections.iter().find(|c| c.try_acquire(max)) {
                Some(c) => c.clone(),
                None => {
                    let connection = connect().await?;
                    tracing::debug!(peer = %key.destination, source = %key.source_identity, "opened HBONE connection");
                    let pooled = Arc::new(PooledConnection {
                        connection,
                        active_streams: AtomicUsize::new(1),
                        idle_since: Mutex::new(Instant::now()),
                    });
                    connections.push(pooled.clone());
                    pooled
                }
            }
        };
        let guard = StreamSlot(pooled.clone());
        let stream = pooled
            .connection
            .connect_stream(authority, forwarded_for)
            .await
            .map_err(E::from)?;
        Ok(stream.with_guard(Box::new(guard)))
    }

    /// Open connections for `key` (for tests and debugging).
    pub fn connections(&self, key: &PoolKey) -> usize {
        let slot = self.slot(key);
        let count = slot
            .try_lock()
            .map(|c| c.iter().filter(|c| !c.connection.is_closed()).count())
            .unwrap_or(0);
        count
    }

    /// Open connections across all keys.
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
mod tests {
    use super::*;
    use crate::hbone::client::handshake_plain;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A plain-text HTTP/2 CONNECT echo server over real loopback TCP (no TLS: the pool's
    /// behaviour does not depend on it). Counts accepted connections.
    async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let send = respond
                                .send_response(http::Response::new(()), false)
                                .unwrap();
                            let mut stream = H2Stream::new(send, req.into_body());
                            let mut buf = [0u8; 64];
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = stream.shutdown().await;
                        });
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn key(source: &str, dst: SocketAddr) -> PoolKey {
        PoolKey::new(
            Identity::new("cluster.local", "default", source),
            "127.0.0.1".parse().unwrap(),
            dst,
            vec![Identity::new("cluster.local", "default", "server")],
        )
    }

    async fn open(pool: &Pool, key: &PoolKey, addr: SocketAddr) -> H2Stream {
        pool.open_stream::<_, _, ClientError>(
            key,
            "10.0.0.1:80".parse().unwrap(),
            None,
            || async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                handshake_plain(tcp, addr).await
            },
        )
        .await
        .unwrap()
    }

    fn config(max: usize, idle: Duration) -> PoolConfig {
        PoolConfig {
            max_streams_per_connection: max,
            idle_timeout: idle,
        }
    }

    #[tokio::test]
    async fn concurrent_streams_share_one_connection() {
        let (addr, accepted) = echo_server().await;
        let pool = Pool::new(config(100, Duration::from_secs(60)));
        let k = key("client", addr);
        let opens = (0..50).map(|_| open(&pool, &k, addr));
        let mut streams = futures_util::future::join_all(opens).await;
        for (i, s) in streams.iter_mut().enumerate() {
            let msg = format!("stream {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.connections(&k), 1);
    }

    #[tokio::test]
    async fn full_connections_make_the_pool_open_another() {
        let (addr, accepted) = echo_server().await;
        let pool = Pool::new(config(2, Duration::from_secs(60)));
        let k = key("client", addr);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(open(&pool, &k, addr).await);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3); // 2 + 2 + 1
                                                        // Streams that end free their slot: the next stream reuses a connection.
        held.truncate(3);
        tokio::task::yield_now().await;
        held.push(open(&pool, &k, addr).await);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn identities_never_share_a_connection() {
        let (addr, accepted) = echo_server().await;
        let pool = Pool::new(config(100, Duration::from_secs(60)));
        let _a = open(&pool, &key("alice", addr), addr).await;
        let _b = open(&pool, &key("bob", addr), addr).await;
        let _a2 = open(&pool, &key("alice", addr), addr).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_busy_ones_kept() {
        let (addr, accepted) = echo_server().await;
        let pool = Pool::new(config(100, Duration::from_millis(200)));
        let idle_key = key("idle", addr);
        let busy_key = key("busy", addr);
        drop(open(&pool, &idle_key, addr).await);
        let _busy = open(&pool, &busy_key, addr).await;
        assert_eq!(pool.total_connections(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.total_connections() != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            pool.total_connections(),
            1,
            "the idle connection was not closed"
        );
        assert_eq!(pool.connections(&busy_key), 1);
        // A new stream for the idle key needs a fresh connection.
        let _again = open(&pool, &idle_key, addr).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_connect_is_reported_and_not_pooled() {
        let pool = Pool::new(config(100, Duration::from_secs(60)));
        let k = key("client", "127.0.0.1:1".parse().unwrap());
        let err = pool
            .open_stream::<_, _, ClientError>(&k, "10.0.0.1:80".parse().unwrap(), None, || async {
                Err(ClientError::Timeout(Duration::from_secs(1)))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)));
        assert_eq!(pool.connections(&k), 0);
    }
}
