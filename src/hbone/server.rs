//! Server side of HBONE: accepts CONNECT streams on an established (already TLS-terminated)
//! HTTP/2 connection and hands each to a handler that decides where it goes.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::settings;
use super::stream::H2Stream;

/// Why a stream request could not be taken as a CONNECT to an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("CONNECT authority {0:?} is not <ip>:<port>")]
    BadAuthority(String),
}

/// One incoming CONNECT stream, not yet answered.
pub struct IncomingStream {
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
}

impl IncomingStream {
    /// The requested `ip:port`, or why the request is not a valid HBONE CONNECT.
    pub fn target(&self) -> Result<SocketAddr, RequestError> {
        if self.request.method() != Method::CONNECT {
            return Err(RequestError::NotConnect(self.request.method().to_string()));
        }
        let authority = self
            .request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        authority
            .parse::<SocketAddr>()
            .map(crate::socket::canonical)
            .map_err(|_| RequestError::BadAuthority(authority.to_string()))
    }

    /// Answers with an error status and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let response = Response::builder()
            .status(status)
            .body(())
            .expect("a status-only response is valid");
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200 and returns the stream as a byte stream.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        Ok(H2Stream::new(send, self.request.into_body()))
    }
}

/// Serves one HTTP/2 connection: each CONNECT stream is passed to `handle` on its own task.
/// Returns when the peer closes the connection. Once `shutdown` resolves, the connection
/// sends GOAWAY, takes no new streams and ends when its open streams have.
pub async fn serve<IO, H, Fut, S>(io: IO, handle: H, shutdown: S) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(IncomingStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME_SIZE)
        .max_concurrent_streams(settings::SERVER_MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    loop {
        let next = if shutting_down {
            connection.accept().await
        } else {
            tokio::select! {
                next = connection.accept() => next,
                () = &mut shutdown => {
                    shutting_down = true;
                    connection.graceful_shutdown();
                    continue;
                }
            }
        };
        let Some(next) = next else { break };
        let (request, respond) = next?;
        tokio::spawn(handle(IncomingStream { request, respond }));
    }
    Ok(())
}
