//! Why a proxied connection failed, mapped in one place to what the peer and the logs see.

use http::StatusCode;

use crate::hbone::client::ClientError;
use crate::hbone::server::RequestError;
use crate::identity::ManagerError;
use crate::state::ResolveError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the original destination: {0}")]
    OriginalDestination(std::io::Error),
    #[error("source address {0} is not a workload served by this tunnel")]
    UnknownSource(std::net::IpAddr),
    #[error("destination {0} is the tunnel itself; refusing a loop")]
    SelfLoop(std::net::SocketAddr),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("certificate: {0}")]
    Certificate(#[from] ManagerError),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Hbone(#[from] ClientError),
    #[error("connect to {addr}: {source}")]
    Upstream {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    UpstreamTimeout(std::net::SocketAddr),
    #[error("bad HBONE request: {0}")]
    BadRequest(#[from] RequestError),
    #[error("CONNECT target {target} is not a workload served by this tunnel")]
    NotLocal { target: std::net::SocketAddr },
    #[error("CONNECT target {target} was sent to {dialed}, which belongs to another workload")]
    TargetMismatch {
        target: std::net::SocketAddr,
        dialed: std::net::IpAddr,
    },
    #[error("inbound TLS handshake: {0}")]
    InboundTls(std::io::Error),
    #[error("peer certificate: {0}")]
    PeerIdentity(crate::tls::TlsError),
    #[error("copy: {0}")]
    Copy(#[from] super::copy::CopyError),
}

impl ProxyError {
    /// The HTTP status an HBONE peer receives when its CONNECT fails with this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::NotLocal { .. }
            | ProxyError::TargetMismatch { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Upstream { .. } | ProxyError::UpstreamTimeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::OriginalDestination(_)
            | ProxyError::UnknownSource(_)
            | ProxyError::SelfLoop(_)
            | ProxyError::Resolve(_)
            | ProxyError::Certificate(_)
            | ProxyError::TlsConfig(_)
            | ProxyError::Hbone(_)
            | ProxyError::InboundTls(_)
            | ProxyError::PeerIdentity(_)
            | ProxyError::Copy(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short, stable label for access logs and the `response_flags` metric label.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::OriginalDestination(_) => "no_original_dst",
            ProxyError::UnknownSource(_) => "unknown_source",
            ProxyError::SelfLoop(_) => "loop",
            ProxyError::Resolve(_) => "no_route",
            ProxyError::Certificate(_) | ProxyError::TlsConfig(_) => "cert_error",
            ProxyError::Hbone(ClientError::Refused { .. }) => "peer_refused",
            ProxyError::Hbone(_) => "hbone_connect_failed",
            ProxyError::Upstream { .. } | ProxyError::UpstreamTimeout(_) => {
                "upstream_connect_failed"
            }
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NotLocal { .. } | ProxyError::TargetMismatch { .. } => "not_local",
            ProxyError::InboundTls(_) | ProxyError::PeerIdentity(_) => "tls_error",
            ProxyError::Copy(_) => "copy_error",
        }
    }
}
