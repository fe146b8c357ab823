//! The DNS proxy's two sockets for one scope (a pod, or the dedicated tunnel): UDP and TCP on
//! the same address, each served by one task that owns every task it spawned, so aborting it
//! (the pod's drain) ends the whole server at once.
//!
//! Bounds per server: [`MAX_UDP_IN_FLIGHT`] UDP queries being answered (beyond it a datagram
//! is dropped — the client retries), [`MAX_TCP_CONNECTIONS`] TCP connections (beyond it a new
//! one is closed at once), each idle for at most [`TCP_IDLE_TIMEOUT`] between messages.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::forward::MAX_MESSAGE;
use super::handler::Handler;
use super::origin::Arrival;
use crate::socket::{canonical, original_dst, SocketFactory};

/// UDP queries being handled at once by one server (a forward holds one for up to the
/// upstream timeout).
pub(crate) const MAX_UDP_IN_FLIGHT: usize = 256;
/// TCP connections one server holds open.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection with no complete message for this long is closed (RFC 7766 suggests
/// seconds, not minutes).
pub(crate) const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum DnsBindError {
    #[error("cannot bind the DNS proxy's UDP socket on {addr}: {source}")]
    Udp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on the DNS proxy's TCP address {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A running DNS proxy. Dropping it (or [`stop`](Self::stop)) closes both sockets and ends
/// every query and connection in progress.
pub(crate) struct DnsServer {
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` in `sockets`' namespace (both before serving either), then
    /// serves them with `handler`.
    pub(crate) async fn start(
        handler: Arc<Handler>,
        sockets: &SocketFactory,
        addr: SocketAddr,
    ) -> Result<DnsServer, DnsBindError> {
        let udp = sockets
            .bind_udp_async(addr)
            .await
            .map_err(|source| DnsBindError::Udp { addr, source })?;
        let tcp = sockets
            .listen_async(addr)
            .await
            .map_err(|source| DnsBindError::Tcp { addr, source })?;
        Ok(DnsServer {
            tasks: vec![
                tokio::spawn(serve_udp(Arc::new(udp), handler.clone())),
                tokio::spawn(serve_tcp(tcp, handler)),
            ],
        })
    }

    /// Closes both sockets; returns once they are closed.
    pub(crate) async fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let arrival = match socket.local_addr() {
        Ok(local) => Arc::new(Arrival::Udp { local }),
        Err(error) => {
            tracing::warn!(%error, "DNS proxy: the UDP socket has no address; not serving UDP");
            return;
        }
    };
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            // ICMP errors from earlier replies surface here on Linux; the socket still works.
            Err(error) => {
                tracing::debug!(%error, "DNS proxy: UDP receive");
                continue;
            }
        };
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_UDP_IN_FLIGHT {
            continue;
        }
        let packet = buf[..len].to_vec();
        let (socket, handler, arrival) = (socket.clone(), handler.clone(), arrival.clone());
        in_flight.spawn(async move {
            let client = canonical(client);
            if let Some(reply) = handler.handle(&packet, client, &arrival).await {
                let _ = socket.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "DNS proxy: TCP accept");
                        // Out of fds or similar: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= MAX_TCP_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                connections.spawn(serve_connection(stream, canonical(client), handler.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2), answered in order, until the client closes,
/// sends a zero length, or stays idle for [`TCP_IDLE_TIMEOUT`].
async fn serve_connection(mut stream: TcpStream, client: SocketAddr, handler: Arc<Handler>) {
    // Where the client connected before the REDIRECT: its nameserver, for forwarded queries.
    let arrival = match stream.local_addr() {
        Ok(local) => Arrival::Tcp {
            local,
            original: original_dst(&stream).map_err(|e| format!("SO_ORIGINAL_DST: {e}")),
        },
        Err(_) => return,
    };
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            let mut message = vec![0u8; usize::from(len)];
            stream.read_exact(&mut message).await?;
            io::Result::Ok(message)
        };
        let message = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read).await {
            Ok(Ok(message)) if !message.is_empty() => message,
            _ => return,
        };
        let Some(reply) = handler.handle(&message, client, &arrival).await else {
            // Not answerable (not even a header): the stream is out of step; close it.
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        // Replies are at most 65,535 bytes: the handler caps TCP replies at u16::MAX.
        framed.extend_from_slice(&(reply.len().min(MAX_MESSAGE) as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
