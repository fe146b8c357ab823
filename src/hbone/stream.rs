//! One HBONE CONNECT stream, as chunks for the proxy's copy loop and as an
//! `AsyncRead + AsyncWrite` byte stream for everything else.
//!
//! The copy loop uses [`H2Stream::halves`]: received DATA payloads are handed out as the
//! `Bytes` h2 decoded them into, and outgoing chunks are handed to h2 as they were read from
//! the socket, so the data path copies no payload between the socket and TLS. Sends wait for
//! HTTP/2 send capacity before taking bytes, so flow control propagates back to the source
//! socket. The byte-stream impls copy (they get and fill borrowed slices).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest chunk handed to h2 at once (matches the maximum frame size we advertise).
const MAX_CHUNK: usize = super::settings::MAX_FRAME_SIZE as usize;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read by the consumer.
    pending: Bytes,
    send_closed: bool,
    /// Dropped with the stream: lets the pool count live streams per connection.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("pending", &self.pending.len())
            .field("send_closed", &self.send_closed)
            .finish()
    }
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            send_closed: false,
            _guard: None,
        }
    }

    /// Attaches a value that lives as long as the stream (e.g. a pool slot).
    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> H2Stream {
        self._guard = Some(guard);
        self
    }

    /// The receiving and the sending half, usable at the same time.
    pub fn halves(&mut self) -> (RecvHalf<'_>, SendHalf<'_>) {
        (
            RecvHalf {
                recv: &mut self.recv,
                pending: &mut self.pending,
            },
            SendHalf {
                send: &mut self.send,
                send_closed: &mut self.send_closed,
            },
        )
    }

    /// Abandons the stream: RST_STREAM with `reason`, so the peer learns the stream was cut
    /// rather than finished. The HTTP/2 connection and its other streams are untouched.
    pub fn reset(mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::CANCEL) | Some(h2::Reason::STREAM_CLOSED) => {
            io::ErrorKind::ConnectionReset
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The receiving side of an [`H2Stream`].
pub struct RecvHalf<'a> {
    recv: &'a mut RecvStream,
    pending: &'a mut Bytes,
}

impl RecvHalf<'_> {
    /// The next received chunk as h2 decoded it (no copy); `None` at END_STREAM. Its bytes
    /// are given back to the peer's flow-control window at once: we hold at most this chunk.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(self.pending))));
        }
        loop {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
    }
}

/// The sending side of an [`H2Stream`].
pub struct SendHalf<'a> {
    send: &'a mut SendStream<Bytes>,
    send_closed: &'a mut bool,
}

impl SendHalf<'_> {
    /// Hands `chunk` to h2 as DATA, in pieces as send capacity comes (each piece is a slice
    /// of the same buffer, not a copy); ready once all of it is queued.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        while !chunk.is_empty() {
            let granted = ready!(poll_send_capacity(self.send, cx, chunk.len()))?;
            self.send
                .send_data(chunk.split_to(granted), false)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }

    /// END_STREAM (once): the peer reads EOF, the other direction stays open.
    pub fn finish(&mut self) -> io::Result<()> {
        if !*self.send_closed {
            *self.send_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Ok(())
    }
}

/// Waits until h2 lets the stream send; how many of `len` bytes (at least one, at most one
/// frame's worth). Capacity already assigned is used without waiting for an increase, which
/// is all `poll_capacity` reports.
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    len: usize,
) -> Poll<io::Result<usize>> {
    let want = len.min(MAX_CHUNK);
    send.reserve_capacity(want);
    loop {
        let available = send.capacity();
        if available > 0 {
            return Poll::Ready(Ok(available.min(want)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (mut recv, _) = self.halves();
        let Some(mut chunk) = ready!(recv.poll_chunk(cx))? else {
            return Poll::Ready(Ok(())); // END_STREAM: EOF
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        chunk.advance(n);
        *recv.pending = chunk;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let granted = ready!(poll_send_capacity(&mut self.send, cx, buf.len()))?;
        let chunk = Bytes::copy_from_slice(&buf[..granted]);
        self.send.send_data(chunk, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(granted))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (_, mut send) = self.halves();
        Poll::Ready(send.finish())
    }
}
