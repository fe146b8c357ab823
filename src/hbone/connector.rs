//! Dialing a new HBONE connection: the source's certificate, a TLS config that accepts only the
//! expected peer identities, a marked TCP connection from the source's address, then TLS and
//! the HTTP/2 handshake.
//!
//! The pool owns one connector and calls it when no pooled connection has a free stream slot,
//! so "how a connection is made" and "when one is made" stay in separate places.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::client::{self, ClientError, Connection};
use super::pool::PoolKey;
use crate::config::PingConfig;
use crate::identity::{ManagerError, SecretManager};
use crate::socket::{SocketFactory, Source};
use crate::tls::{self, TlsError};

/// Why a new HBONE connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("certificate: {0}")]
    Certificate(#[from] ManagerError),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] TlsError),
    #[error("connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TCP connect, or TLS plus the HTTP/2 handshake, took longer than the timeout.
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error(transparent)]
    Handshake(#[from] ClientError),
}

/// Opens mTLS HTTP/2 connections for pool keys. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    certs: Arc<SecretManager>,
    /// Creates the TCP sockets (marked, in the namespace of the pods this pool serves).
    sockets: SocketFactory,
    /// `CONNECTION_TIMEOUT`, applied to the TCP connect and to the TLS + HTTP/2 handshake (and
    /// by the pool to each CONNECT on the connection).
    timeout: Duration,
    /// Keepalive PINGs on every connection it opens.
    ping: PingConfig,
    /// Counts every connection opened (`hbone_connections_opened`).
    opened: Counter,
}

impl Connector {
    pub fn new(
        certs: Arc<SecretManager>,
        sockets: SocketFactory,
        timeout: Duration,
        ping: PingConfig,
        opened: Counter,
    ) -> Connector {
        Connector {
            certs,
            sockets,
            timeout,
            ping,
            opened,
        }
    }

    /// `CONNECTION_TIMEOUT`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The keepalive PINGs of its connections, for connections built on top of one of them
    /// (double HBONE's inner layer).
    pub fn ping(&self) -> PingConfig {
        self.ping
    }

    /// A new connection from `key.source_identity` at `key.source_ip` to `key.destination`,
    /// accepted only if the peer proves one of `key.expected_identities`.
    pub async fn connect(&self, key: &PoolKey) -> Result<Connection, ConnectError> {
        let addr = key.destination;
        let cert = self.certs.fetch(&key.source_identity).await?;
        let tls_config = tls::client_config(&cert, key.expected_identities.clone())?;
        let tcp = tokio::time::timeout(
            self.timeout,
            self.sockets.connect(addr, Source::Local(key.source_ip)),
        )
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Tcp { addr, source })?;
        let connection =
            tokio::time::timeout(self.timeout, client::handshake(tcp, tls_config, self.ping))
                .await
                .map_err(|_| ConnectError::Timeout(addr))??;
        self.opened.inc();
        Ok(connection.expires_by(cert.not_after))
    }
}
