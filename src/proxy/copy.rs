//! Bidirectional byte copy between two connections, half-close aware.
//!
//! When one side finishes sending (EOF), that direction's writer is shut down (FIN, or
//! END_STREAM on HBONE) while the other direction keeps flowing: request/response protocols that
//! half-close rely on this.
//!
//! The copy moves `Bytes` chunks: a TCP read is made only once the socket is readable, and
//! what it read goes whole to the other side as a slice of the read buffer (h2 sends it as
//! DATA without a copy); an HBONE stream's received chunks are written to the socket as h2
//! decoded them. Bulk transfers therefore copy no payload in user space, and an idle
//! connection holds no buffer (see [`TcpSource`]). TCP reads start at [`INITIAL_READ`] and
//! double while reads fill them, up to [`MAX_READ`], so a bulk stream makes few large reads.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::hbone::stream::{H2Stream, RecvHalf, SendHalf};

/// First read size on a TCP connection: one TLS record's worth.
const INITIAL_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the first connection to the second.
    pub a_to_b: u64,
    /// From the second connection to the first.
    pub b_to_a: u64,
}

/// Copies both ways until both directions have seen EOF (or one fails).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<Transferred, CopyError>
where
    A: Duplex + ?Sized,
    B: Duplex + ?Sized,
{
    match copy_bidirectional_until(a, b, std::future::pending::<Infallible>()).await {
        Ended::Done(moved) => Ok(moved),
        Ended::Failed(e) => Err(e),
        Ended::Stopped(never, _) => match never {},
    }
}

/// How a copy that can be stopped from outside ended.
#[derive(Debug)]
pub enum Ended<R> {
    /// Both directions saw EOF and were shut down.
    Done(Transferred),
    /// A direction failed.
    Failed(CopyError),
    /// `stop` resolved (with `R`) first: the copy was abandoned where it was, nothing flushed
    /// or shut down; the caller decides how the two connections are closed.
    Stopped(R, Transferred),
}

/// [`copy_bidirectional`], abandoned as soon as `stop` resolves. `stop` is checked before
/// each round of copying, so once it is ready no more bytes move.
pub async fn copy_bidirectional_until<A, B, S>(a: &mut A, b: &mut B, stop: S) -> Ended<S::Output>
where
    A: Duplex + ?Sized,
    B: Duplex + ?Sized,
    S: Future,
{
    let (mut a_source, mut a_sink) = a.halves();
    let (mut b_source, mut b_sink) = b.halves();
    let mut a_to_b = OneWay::default();
    let mut b_to_a = OneWay::default();
    let mut stop = pin!(stop);
    let outcome = poll_fn(|cx| {
        if let Poll::Ready(why) = stop.as_mut().poll(cx) {
            return Poll::Ready(Err(Halt::Stopped(why)));
        }
        let ab = a_to_b
            .poll(cx, &mut a_source, &mut b_sink)
            .map_err(|e| Halt::Failed(Direction::AToB, e))?;
        let ba = b_to_a
            .poll(cx, &mut b_source, &mut a_sink)
            .map_err(|e| Halt::Failed(Direction::BToA, e))?;
        match (ab, ba) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let transferred = Transferred {
        a_to_b: a_to_b.copied,
        b_to_a: b_to_a.copied,
    };
    match outcome {
        Ok(()) => Ended::Done(transferred),
        Err(Halt::Failed(direction, source)) => Ended::Failed(CopyError {
            direction,
            transferred,
            source,
        }),
        Err(Halt::Stopped(why)) => Ended::Stopped(why, transferred),
    }
}

/// Why the copy loop returned early.
enum Halt<R> {
    Failed(Direction, io::Error),
    Stopped(R),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    AToB,
    BToA,
}

/// A copy that failed part way; `transferred` says how far it got.
#[derive(Debug, thiserror::Error)]
#[error("copy {direction:?} failed after {transferred:?}: {source}")]
pub struct CopyError {
    pub direction: Direction,
    pub transferred: Transferred,
    pub source: io::Error,
}

/// A connection the copy can read chunks from and write chunks to, both at once.
pub trait Duplex {
    type Source<'a>: Source
    where
        Self: 'a;
    type Sink<'a>: Sink
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Source<'_>, Self::Sink<'_>);
}

/// Where a direction's bytes come from.
pub trait Source {
    /// The next chunk; `None` at EOF.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;
}

/// Where a direction's bytes go.
pub trait Sink {
    /// Writes `chunk`, advancing it past what was written; ready once it is empty.
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>>;
    /// Tells the peer nothing more comes (FIN, END_STREAM); the other direction stays open.
    fn finish(&mut self) -> io::Result<()>;
}

impl Duplex for TcpStream {
    type Source<'a> = TcpSource<'a>;
    type Sink<'a> = TcpSink<'a>;
    fn halves(&mut self) -> (TcpSource<'_>, TcpSink<'_>) {
        (
            TcpSource {
                tcp: self,
                read_size: INITIAL_READ,
                buf: BytesMut::new(),
            },
            TcpSink { tcp: self },
        )
    }
}

pub struct TcpSource<'a> {
    tcp: &'a TcpStream,
    /// Size of the next read: doubles while reads fill it (bulk), halves after a short one.
    read_size: usize,
    /// What reads go into; each chunk read is split off it. While a connection moves bulk data
    /// the allocation is reused once the chunks cut from it are sent (a fresh one per read
    /// costs page faults when malloc hands large blocks back to the kernel and takes them
    /// again); it is let go whenever the socket runs dry at the smallest read size, so an
    /// idle connection holds none.
    buf: BytesMut,
}

impl Source for TcpSource<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            // Readiness first: no buffer exists until there is something to put in it.
            if self.tcp.poll_read_ready(cx)?.is_pending() {
                if self.read_size == INITIAL_READ {
                    self.buf = BytesMut::new();
                }
                return Poll::Pending;
            }
            self.buf.reserve(self.read_size);
            let mut limited = (&mut self.buf).limit(self.read_size);
            match self.tcp.try_read_buf(&mut limited) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(n) => {
                    self.read_size = if n == self.read_size {
                        (self.read_size * 2).min(MAX_READ)
                    } else {
                        (self.read_size / 2).max(INITIAL_READ)
                    };
                    return Poll::Ready(Ok(Some(self.buf.split().freeze())));
                }
                // Readiness was stale; tokio cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

pub struct TcpSink<'a> {
    tcp: &'a TcpStream,
}

impl Sink for TcpSink<'_> {
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        while !chunk.is_empty() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(chunk) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => chunk.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn finish(&mut self) -> io::Result<()> {
        socket2::SockRef::from(self.tcp).shutdown(Shutdown::Write)
    }
}

impl Duplex for H2Stream {
    type Source<'a> = RecvHalf<'a>;
    type Sink<'a> = SendHalf<'a>;
    fn halves(&mut self) -> (RecvHalf<'_>, SendHalf<'_>) {
        H2Stream::halves(self)
    }
}

impl Source for RecvHalf<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        RecvHalf::poll_chunk(self, cx)
    }
}

impl Sink for SendHalf<'_> {
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        SendHalf::poll_send(self, cx, chunk)
    }

    fn finish(&mut self) -> io::Result<()> {
        SendHalf::finish(self)
    }
}

/// One direction of the copy: at most one chunk in hand, read but not yet fully written.
#[derive(Default)]
struct OneWay {
    chunk: Bytes,
    read_eof: bool,
    finished: bool,
    copied: u64,
}

impl OneWay {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut impl Source,
        sink: &mut impl Sink,
    ) -> Poll<io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.chunk.is_empty() && !self.read_eof {
                match ready!(source.poll_chunk(cx))? {
                    Some(chunk) => self.chunk = chunk,
                    None => self.read_eof = true,
                }
            }
            if !self.chunk.is_empty() {
                let before = self.chunk.len();
                let sent = sink.poll_send(cx, &mut self.chunk);
                self.copied += (before - self.chunk.len()) as u64;
                ready!(sent)?;
            }
            if self.read_eof {
                sink.finish()?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
