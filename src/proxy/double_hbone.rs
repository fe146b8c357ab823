//! Outbound double HBONE (multi-network meshes): the client's side of a route through a
//! network gateway (`outbound/route.rs`, `OutboundProtocol::DoubleHbone`).
//!
//! The outer layer is an mTLS HTTP/2 connection to the gateway, verified against the
//! gateway's identities, with one CONNECT to the service's `hostname:port`. Inside that
//! stream runs a second, complete HBONE connection — mTLS verified against the destination's
//! identities, HTTP/2, one CONNECT to the same target with `x-forwarded-network` — that only
//! the destination's tunnel terminates. As in ztunnel, neither layer is pooled: the gateway
//! picks the endpoint per outer stream, so a shared inner connection would pin every client
//! connection to one endpoint; each outbound connection gets its own pair.

use std::net::SocketAddr;

use super::{ProxyError, ProxyInputs};
use crate::hbone::nested::{self, NestedError, FORWARDED_NETWORK_HEADER};
use crate::hbone::pool::{PoolError, PoolKey};
use crate::hbone::stream::H2Stream;
use crate::identity::Identity;
use crate::tls;

/// What the client's tunnel needs to open one double-HBONE stream.
pub(super) struct Hop<'a> {
    pub source: Identity,
    /// The client's address: the outer connection leaves from it, and both CONNECTs name it
    /// in `forwarded`.
    pub client: SocketAddr,
    pub gateway: SocketAddr,
    pub gateway_identities: &'a [Identity],
    pub target: &'a str,
    pub final_identities: &'a [Identity],
}

/// Opens the outer and the inner layer; the returned stream is the inner CONNECT's, carrying
/// the client's bytes end to end to the destination. Bounded by `CONNECTION_TIMEOUT`.
pub(super) async fn open(pi: &ProxyInputs, hop: Hop<'_>) -> Result<H2Stream, ProxyError> {
    let gateway = hop.gateway;
    match tokio::time::timeout(pi.config.connect_timeout, open_layers(pi, &hop)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::UpstreamTimeout(gateway)),
    }
}

async fn open_layers(pi: &ProxyInputs, hop: &Hop<'_>) -> Result<H2Stream, ProxyError> {
    let double = |source: NestedError| ProxyError::DoubleHbone {
        gateway: hop.gateway,
        source: Box::new(source),
    };
    let key = PoolKey::new(
        hop.source.clone(),
        hop.client.ip(),
        hop.gateway,
        hop.gateway_identities.to_vec(),
    );
    // The outer layer: TLS verified against the gateway's identities (the connector's TLS
    // config accepts only `key.expected_identities`).
    let outer = Box::pin(pi.connector.connect(&key))
        .await
        .map_err(|e| ProxyError::Pool(PoolError::Connect(e)))?;
    let carrier = nested::connect_authority(&outer, hop.target, Some(hop.client.ip()), &[])
        .await
        .map_err(double)?;
    // The inner layer: the client's own certificate, and only the destination's identities.
    let cert = pi.certs.fetch(&hop.source).await?;
    let inner_tls = tls::client_config(&cert, hop.final_identities.to_vec())?;
    let inner = Box::pin(nested::handshake_over(
        carrier,
        inner_tls,
        hop.gateway,
        pi.connector.ping(),
    ))
    .await
    .map_err(double)?;
    let network = pi.config.network.as_str();
    nested::connect_authority(
        &inner,
        hop.target,
        Some(hop.client.ip()),
        &[(FORWARDED_NETWORK_HEADER, network)],
    )
    .await
    .map_err(double)
}
