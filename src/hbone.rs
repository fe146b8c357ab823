//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3.
//!
//! `client` runs the TLS and HTTP/2 handshakes and opens CONNECT streams, `connector` dials a
//! new connection (certificate, TLS config, TCP, handshake), `pool` shares connections between
//! streams of the same source identity and opens new ones with its connector, `server`
//! terminates them, `keepalive` PINGs both ends' connections, and `stream` makes one CONNECT
//! stream look like a byte stream to the copy loop. `nested` runs HBONE over any byte stream
//! (double HBONE's inner layer, inside an outer CONNECT stream) and sends CONNECTs to
//! `hostname:port` targets.

pub mod client;
pub mod connector;
pub mod keepalive;
pub mod nested;
pub mod pool;
pub mod server;
pub mod stream;
#[cfg(test)]
pub(crate) mod test_relay;

/// HTTP/2 settings used on both ends. Large windows keep a single stream from stalling on
/// flow control across a high bandwidth-delay path; frames up to 1 MiB cut per-frame overhead.
///
/// What one connection may make us hold is bounded by these: received data waits in at most
/// `STREAM_WINDOW` per stream and `CONNECTION_WINDOW` per connection (capacity is released only
/// as the copy loop consumes it), data we send waits in at most `MAX_SEND_BUFFER` per stream,
/// and a peer opens at most `MAX_CONCURRENT_STREAMS` streams with at most `MAX_HEADER_LIST`
/// bytes of headers each.
pub(crate) mod settings {
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
    /// Streams one connection carries at once, on either end (ztunnel: 200); the pool opens
    /// another connection before reaching it (`POOL_MAX_STREAMS_PER_CONNECTION`).
    pub const MAX_CONCURRENT_STREAMS: u32 = 200;
    /// Decoded header bytes one request or response may carry (ztunnel's server: 64 KiB). A
    /// CONNECT carries a handful of short headers; h2's default is 16 MiB.
    pub const MAX_HEADER_LIST: u32 = 64 * 1024;
    /// Data queued per stream waiting for the peer's window (h2's default and ztunnel's
    /// server value, 400 KiB): the send half reserves capacity before it takes bytes, so this
    /// bounds a stream's queued data without limiting its throughput below the window's.
    pub const MAX_SEND_BUFFER: usize = 400 * 1024;
}
