//! The pool over real loopback TCP and mTLS: an HTTP/2 CONNECT echo server presenting the
//! `server` identity, and pools whose connector dials it with certificates from the same
//! in-process CA.

use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::config::PingConfig;
use crate::identity::CertificateSource;
use crate::identity::{LocalCa, SecretManager};
use crate::socket::SocketFactory;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

fn secrets() -> Arc<SecretManager> {
    let ca = LocalCa::generate("cluster.local").unwrap();
    SecretManager::new(
        CertificateSource::Local(Arc::new(ca)),
        Duration::from_secs(3600),
    )
}

/// An mTLS HTTP/2 CONNECT echo server on 127.0.0.1 presenting `server`'s certificate from
/// `certs`. Counts accepted TCP connections.
async fn echo_server(certs: &SecretManager) -> (SocketAddr, Arc<AtomicUsize>) {
    let cert = certs.fetch(&id("server")).await.unwrap();
    let acceptor = TlsAcceptor::from(crate::tls::server_config(&cert).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut conn = h2::server::handshake(tls).await.unwrap();
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
        id(source),
        "127.0.0.1".parse().unwrap(),
        dst,
        vec![id("server")],
    )
}

/// A pool whose connector takes certificates from `certs` and dials from this namespace.
fn pool(certs: &Arc<SecretManager>, max: usize, idle: Duration) -> Pool {
    counted_pool(certs, max, idle, PoolGauges::default())
}

/// [`pool`], counting into `gauges`.
fn counted_pool(
    certs: &Arc<SecretManager>,
    max: usize,
    idle: Duration,
    gauges: PoolGauges,
) -> Pool {
    timed_pool(
        certs,
        max,
        idle,
        gauges,
        Duration::from_secs(5),
        PingConfig::default(),
    )
}

/// [`counted_pool`] with a connection timeout and keepalive PINGs of its own.
fn timed_pool(
    certs: &Arc<SecretManager>,
    max: usize,
    idle: Duration,
    gauges: PoolGauges,
    timeout: Duration,
    ping: PingConfig,
) -> Pool {
    let config = PoolConfig {
        max_streams_per_connection: max,
        idle_timeout: idle,
    };
    let connector = Connector::new(
        certs.clone(),
        SocketFactory::current(None),
        timeout,
        ping,
        Default::default(),
    );
    Pool::new(config, connector, gauges)
}

/// An mTLS HTTP/2 server presenting `server` that takes CONNECT requests and never answers
/// them (a stalled peer tunnel).
async fn stalled_server(certs: &SecretManager) -> SocketAddr {
    let cert = certs.fetch(&id("server")).await.unwrap();
    let acceptor = TlsAcceptor::from(crate::tls::server_config(&cert).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let mut unanswered = Vec::new();
                while let Some(Ok(request)) = conn.accept().await {
                    unanswered.push(request);
                }
            });
        }
    });
    addr
}

async fn open(pool: &Pool, key: &PoolKey) -> H2Stream {
    pool.open_stream(key, "10.0.0.1:80".parse().unwrap(), None)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_streams_share_one_connection() {
    let certs = secrets();
    let (addr, accepted) = echo_server(&certs).await;
    let pool = pool(&certs, 100, Duration::from_secs(60));
    let k = key("client", addr);
    let opens = (0..50).map(|_| open(&pool, &k));
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
    let certs = secrets();
    let (addr, accepted) = echo_server(&certs).await;
    let pool = pool(&certs, 2, Duration::from_secs(60));
    let k = key("client", addr);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(open(&pool, &k).await);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3); // 2 + 2 + 1
                                                    // Streams that end free their slot: the next stream reuses a connection.
    held.truncate(3);
    tokio::task::yield_now().await;
    held.push(open(&pool, &k).await);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gauges_count_held_connections_and_open_streams() {
    let certs = secrets();
    let (addr, _) = echo_server(&certs).await;
    let gauges = PoolGauges::default();
    let pool = counted_pool(&certs, 2, Duration::from_secs(60), gauges.clone());
    let k = key("client", addr);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(&pool, &k).await);
    }
    assert_eq!((gauges.connections.get(), gauges.streams.get()), (2, 3));
    held.truncate(1);
    assert_eq!((gauges.connections.get(), gauges.streams.get()), (2, 1));
    held.clear();
    // Idle connections stay pooled (and counted) until the idle timeout.
    assert_eq!((gauges.connections.get(), gauges.streams.get()), (2, 0));
    drop(pool);
    assert_eq!(gauges.connections.get(), 0);
}

#[tokio::test]
async fn identities_never_share_a_connection() {
    let certs = secrets();
    let (addr, accepted) = echo_server(&certs).await;
    let pool = pool(&certs, 100, Duration::from_secs(60));
    let _a = open(&pool, &key("alice", addr)).await;
    let _b = open(&pool, &key("bob", addr)).await;
    let _a2 = open(&pool, &key("alice", addr)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let certs = secrets();
    let (addr, accepted) = echo_server(&certs).await;
    let pool = pool(&certs, 100, Duration::from_millis(200));
    let idle_key = key("idle", addr);
    let busy_key = key("busy", addr);
    drop(open(&pool, &idle_key).await);
    let _busy = open(&pool, &busy_key).await;
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
    let _again = open(&pool, &idle_key).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failed_connect_is_reported_and_not_pooled() {
    let certs = secrets();
    let pool = pool(&certs, 100, Duration::from_secs(60));
    // Nothing listens on port 1: the connector's TCP connect is refused.
    let k = key("client", "127.0.0.1:1".parse().unwrap());
    let err = pool
        .open_stream(&k, "10.0.0.1:80".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::Connect(ConnectError::Tcp { .. })),
        "{err:?}"
    );
    assert_eq!(pool.connections(&k), 0);
}

#[tokio::test]
async fn a_peer_with_an_unexpected_identity_is_refused_and_not_pooled() {
    let certs = secrets();
    let (addr, _) = echo_server(&certs).await;
    let pool = pool(&certs, 100, Duration::from_secs(60));
    // The server proves `server`; this key accepts only `other`.
    let k = PoolKey::new(
        id("client"),
        "127.0.0.1".parse().unwrap(),
        addr,
        vec![id("other")],
    );
    let err = pool
        .open_stream(&k, "10.0.0.1:80".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::Connect(ConnectError::Handshake(ClientError::Tls { .. }))
        ),
        "{err:?}"
    );
    assert_eq!(pool.connections(&k), 0);
}

#[tokio::test]
async fn a_peer_that_never_answers_the_connect_fails_the_stream_after_the_timeout() {
    let certs = secrets();
    let addr = stalled_server(&certs).await;
    let timeout = Duration::from_millis(300);
    let pool = timed_pool(
        &certs,
        100,
        Duration::from_secs(60),
        PoolGauges::default(),
        timeout,
        PingConfig::default(),
    );
    let k = key("client", addr);
    let open = pool.open_stream(&k, "10.0.0.1:80".parse().unwrap(), None);
    let err = tokio::time::timeout(Duration::from_secs(20), open)
        .await
        .expect("the CONNECT is still waiting for the stalled peer")
        .unwrap_err();
    assert!(
        matches!(err, PoolError::StreamTimeout { after, .. } if after == timeout),
        "{err:?}"
    );
    // The stalled connection is no longer handed out.
    assert_eq!(pool.connections(&k), 0);
}

#[tokio::test]
async fn a_pooled_connection_to_a_vanished_peer_is_dropped_and_the_next_stream_dials_anew() {
    let certs = secrets();
    let (addr, accepted) = echo_server(&certs).await;
    let relay = crate::hbone::test_relay::Relay::start(addr).await;
    let ping = PingConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let pool = timed_pool(
        &certs,
        100,
        Duration::from_secs(3600),
        PoolGauges::default(),
        Duration::from_secs(5),
        ping,
    );
    let k = key("client", relay.addr);
    drop(open(&pool, &k).await);
    assert_eq!(pool.connections(&k), 1);
    // PINGs are answered: the idle connection stays pooled.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.connections(&k), 1);
    relay.freeze();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.connections(&k) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pool.connections(&k),
        0,
        "the vanished peer's connection is still pooled"
    );
    let mut stream = open(&pool, &k).await;
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
