//! Bidirectional byte copy between two connections, half-close aware.
//!
//! When one side finishes sending (EOF), that direction's writer is shut down (FIN, or
//! END_STREAM on HBONE) while the other direction keeps flowing: request/response protocols that
//! half-close rely on this. Each direction owns one buffer that starts small (idle connections
//! cost little) and doubles whenever a read fills it, up to a cap: bulk transfers get large reads
//! with no allocation per chunk.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const INITIAL_BUFFER: usize = 16 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

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
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
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
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: Future,
{
    let mut a_to_b = OneWay::new();
    let mut b_to_a = OneWay::new();
    let mut stop = pin!(stop);
    let outcome = poll_fn(|cx| {
        if let Poll::Ready(why) = stop.as_mut().poll(cx) {
            return Poll::Ready(Err(Halt::Stopped(why)));
        }
        let ab = a_to_b
            .poll(cx, a, b)
            .map_err(|e| Halt::Failed(Direction::AToB, e))?;
        let ba = b_to_a
            .poll(cx, b, a)
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

struct OneWay {
    buf: Vec<u8>,
    /// Bytes `buf[pos..filled]` are read but not yet written.
    pos: usize,
    filled: usize,
    read_eof: bool,
    needs_flush: bool,
    finished: bool,
    copied: u64,
}

impl OneWay {
    fn new() -> OneWay {
        OneWay {
            buf: vec![0; INITIAL_BUFFER],
            pos: 0,
            filled: 0,
            read_eof: false,
            needs_flush: false,
            finished: false,
            copied: 0,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.filled && !self.read_eof {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        // Nothing more to read now: push out what was written so far.
                        if self.needs_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.needs_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = read_buf.filled().len();
                if n == 0 {
                    self.read_eof = true;
                } else {
                    self.pos = 0;
                    self.filled = n;
                }
            }
            while self.pos < self.filled {
                let n = ready!(
                    Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.filled])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.needs_flush = true;
            }
            if self.filled == self.buf.len() && self.buf.len() < MAX_BUFFER {
                // The last read filled the whole buffer: this connection is moving bulk data.
                let grown = (self.buf.len() * 2).min(MAX_BUFFER);
                self.buf.resize(grown, 0);
            }
            if self.read_eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
