//! HTTP/2 keepalive: PINGs on an otherwise quiet connection, so a peer that vanished without
//! closing (powered off, partitioned, a NAT mapping dropped) is noticed and its connection
//! closed, instead of holding a descriptor and, in the pool, being handed out to new streams.
//!
//! The PINGs are sent by the connection's own driver (it must be polled for them to go out and
//! for the PONG to be read), so a connection whose driver task is alive answers promptly even
//! when every stream on it is blocked on flow control.

use h2::{Ping, PingPong};

use crate::config::PingConfig;

/// Why [`watch`] gave up on the connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerGone {
    #[error("no PING answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Pings every `config.interval` (the first after one interval: a fresh connection has just
/// proved the peer is there) and returns when a PING goes unanswered for `config.timeout`.
/// Never returns while the peer answers; a PING that fails because the connection is already
/// closing also never returns (the driver ends the connection itself), so the caller
/// `select!`s this against the driver.
pub async fn watch(mut ping_pong: PingPong, config: PingConfig) -> PeerGone {
    loop {
        tokio::time::sleep(config.interval).await;
        match tokio::time::timeout(config.timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is ending on its own (GOAWAY, I/O error): nothing to watch.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return PeerGone::Timeout(config.timeout),
        }
    }
}
