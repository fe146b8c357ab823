//! Why a proxied connection failed, mapped in one place to what the peer and the logs see.

use http::StatusCode;

use crate::authz::DenyReason;
use crate::hbone::client::ClientError;
use crate::hbone::connector::ConnectError;
use crate::hbone::nested::NestedError;
use crate::hbone::pool::PoolError;
use crate::hbone::server::RequestError;
use crate::identity::ManagerError;
use crate::state::{GatewayForwardError, NetworkGatewayError, ResolveError, WaypointError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the original destination: {0}")]
    OriginalDestination(std::io::Error),
    #[error("source address {0} is not a workload served by this tunnel")]
    UnknownSource(std::net::IpAddr),
    #[error("address {ip} is held by several local workloads ({}): which identity to use is ambiguous", uids.join(", "))]
    AmbiguousLocal {
        ip: std::net::IpAddr,
        uids: Vec<String>,
    },
    #[error("destination {0} is the tunnel itself; refusing a loop")]
    SelfLoop(std::net::SocketAddr),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Outbound: the destination names a waypoint that cannot be reached. Refused rather than
    /// sent directly, which would skip the waypoint's policy.
    #[error(transparent)]
    Waypoint(#[from] WaypointError),
    /// Outbound: the destination is on another network and its network gateway cannot be
    /// used. Refused: nothing is ever sent directly to another network.
    /// Boxed, as the other rare, large variants: every `Result` on the data path carries
    /// this enum.
    #[error(transparent)]
    NetworkGateway(Box<NetworkGatewayError>),
    /// Outbound double HBONE: the inner layer (TLS to the destination through the gateway,
    /// or its CONNECT) failed.
    #[error("double HBONE through {gateway}: {source}")]
    DoubleHbone {
        gateway: std::net::SocketAddr,
        source: Box<NestedError>,
    },
    /// At a network gateway: the `hostname:port` target has no endpoint to forward to.
    #[error("network gateway: CONNECT to {target}: {source}")]
    GatewayForward {
        target: String,
        source: Box<GatewayForwardError>,
    },
    /// Inbound: the target workload has a waypoint, and the peer is not one of its instances.
    #[error("{target} has waypoint {waypoint}: refusing {peer}, which is not it")]
    WaypointBypass {
        target: std::net::SocketAddr,
        waypoint: String,
        /// The peer's address and proven identity (or `plaintext`).
        peer: String,
    },
    /// Outbound to an endpoint known by hostname: its DNS lookup failed.
    #[error(transparent)]
    Lookup(#[from] super::lookup::LookupError),
    /// The inbound side's own certificate (the dialed workload's).
    #[error("certificate: {0}")]
    Certificate(#[from] ManagerError),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] crate::tls::TlsError),
    /// Outbound HBONE: no connection to the peer tunnel, or the CONNECT on it failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
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
    #[error(
        "CONNECT target {hostname} names no service with a target port for the dialed workload"
    )]
    UnknownHostname { hostname: String },
    #[error("CONNECT target {target} was sent to {dialed}, which belongs to another workload")]
    TargetMismatch {
        target: std::net::SocketAddr,
        dialed: std::net::IpAddr,
    },
    /// The authorize step refused the connection.
    #[error("denied: {0}")]
    Denied(DenyReason),
    /// A live connection, admitted earlier, that the mesh state now denies: closed by the
    /// re-check after a policy (or workload) change.
    #[error("closed: the changed policies deny it: {0}")]
    PolicyRevoked(DenyReason),
    #[error("inbound TLS handshake: {0}")]
    InboundTls(std::io::Error),
    /// Inbound HBONE: the peer did not finish TLS within `HBONE_HANDSHAKE_TIMEOUT`.
    #[error("inbound TLS handshake not finished within {0:?} (HBONE_HANDSHAKE_TIMEOUT)")]
    InboundHandshakeTimeout(std::time::Duration),
    #[error("peer certificate: {0}")]
    PeerIdentity(crate::tls::TlsError),
    /// Inbound HBONE: answering an accepted CONNECT stream failed.
    #[error("answering the CONNECT to {target}: {source}")]
    InboundStream {
        target: std::net::SocketAddr,
        source: h2::Error,
    },
    #[error("copy: {0}")]
    Copy(#[from] super::copy::CopyError),
}

impl ProxyError {
    /// The HTTP status an HBONE peer receives when its CONNECT fails with this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::NotLocal { .. }
            | ProxyError::UnknownHostname { .. }
            | ProxyError::TargetMismatch { .. }
            | ProxyError::SelfLoop(_) => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_)
            | ProxyError::PolicyRevoked(_)
            | ProxyError::WaypointBypass { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::GatewayForward { source, .. }
                if matches!(
                    **source,
                    GatewayForwardError::UnknownService { .. }
                        | GatewayForwardError::UnknownPort { .. }
                ) =>
            {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::GatewayForward { .. }
            | ProxyError::Lookup(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::OriginalDestination(_)
            | ProxyError::UnknownSource(_)
            | ProxyError::AmbiguousLocal { .. }
            | ProxyError::Resolve(_)
            | ProxyError::Waypoint(_)
            | ProxyError::NetworkGateway(_)
            | ProxyError::DoubleHbone { .. }
            | ProxyError::Certificate(_)
            | ProxyError::TlsConfig(_)
            | ProxyError::Pool(_)
            | ProxyError::InboundTls(_)
            | ProxyError::InboundHandshakeTimeout(_)
            | ProxyError::PeerIdentity(_)
            | ProxyError::InboundStream { .. }
            | ProxyError::Copy(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short, stable label for the access log's `flag` field (see [`response_flags`](Self::response_flags)
    /// for the metric label).
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::OriginalDestination(_) => "no_original_dst",
            ProxyError::UnknownSource(_) => "unknown_source",
            ProxyError::AmbiguousLocal { .. } => "ambiguous_workload",
            ProxyError::SelfLoop(_) => "loop",
            ProxyError::Resolve(_) => "no_route",
            ProxyError::Waypoint(_) => "waypoint_unavailable",
            ProxyError::WaypointBypass { .. } => "waypoint_bypass",
            ProxyError::NetworkGateway(_) => "network_gateway_unavailable",
            ProxyError::GatewayForward { .. } => "gateway_no_route",
            ProxyError::DoubleHbone { source, .. }
                if matches!(**source, NestedError::Refused { .. }) =>
            {
                "peer_refused"
            }
            ProxyError::DoubleHbone { .. } => "hbone_connect_failed",
            ProxyError::Lookup(_) => "dns_lookup_failed",
            ProxyError::Certificate(_)
            | ProxyError::TlsConfig(_)
            | ProxyError::Pool(PoolError::Connect(
                ConnectError::Certificate(_) | ConnectError::TlsConfig(_),
            )) => "cert_error",
            ProxyError::Pool(PoolError::Connect(
                ConnectError::Tcp { .. } | ConnectError::Timeout(_),
            ))
            | ProxyError::Pool(PoolError::StreamTimeout { .. })
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout(_) => "upstream_connect_failed",
            ProxyError::Pool(PoolError::Stream(ClientError::Refused { .. })) => "peer_refused",
            ProxyError::Pool(
                PoolError::Connect(ConnectError::Handshake(_))
                | PoolError::Stream(
                    ClientError::Connect { .. }
                    | ClientError::Tls { .. }
                    | ClientError::NoH2 { .. }
                    | ClientError::Handshake { .. }
                    | ClientError::Stream { .. },
                ),
            )
            | ProxyError::InboundStream { .. } => "hbone_connect_failed",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NotLocal { .. } | ProxyError::TargetMismatch { .. } => "not_local",
            ProxyError::UnknownHostname { .. } => "unknown_hostname",
            ProxyError::Denied(_) => "policy_denied",
            ProxyError::PolicyRevoked(_) => "policy_revoked",
            ProxyError::InboundTls(_) | ProxyError::PeerIdentity(_) => "tls_error",
            ProxyError::InboundHandshakeTimeout(_) => "handshake_timeout",
            ProxyError::Copy(_) => "copy_error",
        }
    }

    /// The `response_flags` label of the `istio_tcp_*` metrics, in ztunnel's vocabulary (what
    /// Kiali and Istio's dashboards read: `-` is success, anything else an error). Coarser than
    /// [`flag`](Self::flag), which the access log keeps for diagnosis.
    pub fn response_flags(&self) -> &'static str {
        match self {
            ProxyError::Denied(_)
            | ProxyError::PolicyRevoked(_)
            | ProxyError::WaypointBypass { .. } => "DENY",
            ProxyError::DoubleHbone { source, .. }
                if matches!(**source, NestedError::Tls { .. }) =>
            {
                "TLS_FAILURE"
            }
            ProxyError::InboundTls(_)
            | ProxyError::Pool(
                PoolError::Connect(ConnectError::Handshake(_))
                | PoolError::Stream(ClientError::Tls { .. }),
            ) => "TLS_FAILURE",
            ProxyError::Pool(PoolError::Stream(
                ClientError::NoH2 { .. } | ClientError::Handshake { .. },
            )) => "H2_HANDSHAKE_FAILURE",
            ProxyError::Certificate(_)
            | ProxyError::TlsConfig(_)
            | ProxyError::PeerIdentity(_)
            | ProxyError::Pool(PoolError::Connect(
                ConnectError::Certificate(_) | ConnectError::TlsConfig(_),
            )) => "IDENTITY_ERROR",
            // ztunnel's catch-all for every other failure.
            _ => "CONNECT",
        }
    }

    /// The authorize step's reason, when this is a denial, up front or of a live connection
    /// later (logged as its own field).
    pub fn denial(&self) -> Option<&DenyReason> {
        match self {
            ProxyError::Denied(reason) | ProxyError::PolicyRevoked(reason) => Some(reason),
            _ => None,
        }
    }

    /// The reason, when the authorize step refused the connection up front (what
    /// `nodetunnel_policy_denials_total` counts). A revoked live connection was admitted
    /// first; it shows as `response_flags="DENY"` on the `istio_tcp_*` metrics and
    /// `flag=policy_revoked` in the access log.
    pub fn refusal(&self) -> Option<&DenyReason> {
        match self {
            ProxyError::Denied(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

impl ProxyError {
    /// The error for a local workload lookup of `ip` that found none (`unknown`) or several.
    pub(crate) fn local_miss(
        miss: super::LocalMiss,
        ip: std::net::IpAddr,
        unknown: ProxyError,
    ) -> ProxyError {
        match miss {
            super::LocalMiss::Unknown => unknown,
            super::LocalMiss::Ambiguous(uids) => ProxyError::AmbiguousLocal { ip, uids },
        }
    }
}

impl From<NetworkGatewayError> for ProxyError {
    fn from(e: NetworkGatewayError) -> ProxyError {
        ProxyError::NetworkGateway(Box::new(e))
    }
}
