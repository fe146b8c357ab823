//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3.
//!
//! `client` runs the TLS and HTTP/2 handshakes and opens CONNECT streams, `connector` dials a
//! new connection (certificate, TLS config, TCP, handshake), `pool` shares connections between
//! streams of the same source identity and opens new ones with its connector, `server`
//! terminates them, and `stream` makes one CONNECT stream look like a byte stream to the copy
//! loop. `nested` runs HBONE over any byte stream (double HBONE's inner layer, inside an outer
//! CONNECT stream) and sends CONNECTs to `hostname:port` targets.

pub mod client;
pub mod connector;
pub mod nested;
pub mod pool;
pub mod server;
pub mod stream;

/// HTTP/2 settings used on both ends. Large windows keep a single stream from stalling on
/// flow control across a high bandwidth-delay path; frames up to 1 MiB cut per-frame overhead.
pub(crate) mod settings {
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
    /// Streams a server accepts on one connection; clients cap themselves lower (pool config).
    pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 1000;
}
