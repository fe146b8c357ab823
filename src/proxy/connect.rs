//! The plain TCP connect every path uses to reach an upstream that is not a peer tunnel:
//! outbound passthrough, and both inbound paths delivering to the local app.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{ProxyError, ProxyInputs};
use crate::socket::Source;

/// A TCP connection from the group's socket factory (marked, so the capture rules let it pass,
/// and in the group's namespace), given up after `CONNECTION_TIMEOUT`.
pub(super) async fn connect_plain(
    pi: &ProxyInputs,
    addr: SocketAddr,
    source: Source,
) -> Result<TcpStream, ProxyError> {
    // Boxed, as every setup step a connection task awaits: the task's future is as large as
    // its largest await point and lives as long as the connection, so the steps that are over
    // once the copy starts keep their state on the heap only while they run.
    let connect = Box::pin(pi.sockets.connect(addr, source));
    match tokio::time::timeout(pi.config.connect_timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ProxyError::Upstream { addr, source }),
        Err(_) => Err(ProxyError::UpstreamTimeout(addr)),
    }
}
