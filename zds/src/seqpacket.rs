//! Async Unix `SOCK_SEQPACKET` sockets that carry file descriptors (`SCM_RIGHTS`).
//!
//! One datagram is one message. Received descriptors become [`OwnedFd`]s before anything
//! looks at the payload, so a rejected message closes them on drop and none can leak.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, MsgFlags, UnixAddr};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use tokio::io::unix::AsyncFd;

/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`). The control buffer has
/// room for this many, so the kernel never has to drop descriptors for lack of space.
const SCM_MAX_FD: usize = 253;

/// A connected socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
    cmsg: Vec<u8>,
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// Bytes written to the buffer (at most its length).
    pub len: usize,
    /// Every descriptor that came with it, already owned.
    pub fds: Vec<OwnedFd>,
    /// The datagram did not fit the buffer (`MSG_TRUNC`); the rest was discarded.
    pub truncated: bool,
    /// Control data did not fit (`MSG_CTRUNC`): descriptors may have been dropped.
    pub control_truncated: bool,
}

/// The connected socket, for socket options such as the peer's credentials.
impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl SeqPacket {
    /// Connects to a listening socket. Fails with `WouldBlock` if its backlog is full.
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let socket = Socket::new(Domain::UNIX, seqpacket(), None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        SeqPacket::new(socket.into())
    }

    fn new(fd: OwnedFd) -> io::Result<SeqPacket> {
        Ok(SeqPacket {
            fd: sys::register(fd)?,
            cmsg: nix::cmsg_space!([RawFd; SCM_MAX_FD]),
        })
    }

    /// Leaves room for only two descriptors, so that more overflow (MSG_CTRUNC).
    #[cfg(test)]
    fn shrink_control_buffer(&mut self) {
        self.cmsg = nix::cmsg_space!([RawFd; 2]);
    }

    /// Sends one datagram, with `fds` as `SCM_RIGHTS` when there are any.
    pub async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(bytes)];
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, cmsgs, flags, None)
                    .map_err(io::Error::from)
            });
            match sent {
                // A seqpacket send is all or nothing.
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram into `buf`. `None` at end of stream. A zero-length read is
    /// either the peer closing or an empty datagram; the socket's hang-up state tells them
    /// apart, so an empty datagram is returned as one (and gets its error ack) instead of
    /// ending the connection.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let cmsg = &mut self.cmsg;
            match guard.try_io(|fd| recv_once(fd.as_raw_fd(), buf, cmsg)) {
                Ok(Ok(d))
                    if d.len == 0
                        && d.fds.is_empty()
                        && !d.control_truncated
                        && peer_hung_up(self.fd.get_ref().as_fd())? =>
                {
                    return Ok(None)
                }
                Ok(Ok(d)) => return Ok(Some(d)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Whether the other end has closed (POLLHUP / POLLRDHUP), without waiting.
fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // nix has no name for POLLRDHUP; the bit is Linux's.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(fd, rdhup)];
    poll(&mut fds, PollTimeout::ZERO)?;
    // `revents` is `None` when a bit nix does not know is set, which can only be POLLRDHUP.
    Ok(match fds[0].revents() {
        None => true,
        Some(seen) => seen.intersects(PollFlags::POLLHUP | rdhup),
    })
}

fn recv_once(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Datagram> {
    // The kernel writes control messages back to back; zeroing first makes the end of
    // what it wrote recognisable to `sys::take_fds`.
    cmsg.fill(0);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), flags).map_err(io::Error::from)?;
    let (bytes, got) = (msg.bytes, msg.flags);
    // Parse the control buffer ourselves rather than with `RecvMsg::cmsgs`, which refuses
    // to iterate after MSG_CTRUNC and would leave the descriptors that did arrive open.
    let fds = sys::take_fds(cmsg);
    Ok(Datagram {
        len: bytes.min(buf.len()),
        fds,
        truncated: got.contains(MsgFlags::MSG_TRUNC),
        control_truncated: got.contains(MsgFlags::MSG_CTRUNC),
    })
}

fn seqpacket() -> Type {
    Type::SEQPACKET.nonblocking().cloexec()
}

/// A listening socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacketListener {
    /// Binds `path` (removing a stale socket file first), makes the file owner-only and only
    /// then listens, so it never accepts a connection with a looser mode.
    pub fn bind(path: &Path) -> io::Result<SeqPacketListener> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = Socket::new(Domain::UNIX, seqpacket(), None)?;
        socket.bind(&SockAddr::unix(path)?)?;
        nodetunnel_base::local_socket::restrict_to_owner(path)?;
        socket.listen(128)?;
        Ok(SeqPacketListener {
            fd: sys::register(socket.into())?,
        })
    }

    pub async fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| SockRef::from(fd.get_ref()).accept()) {
                Ok(Ok((socket, _))) => {
                    socket.set_nonblocking(true)?;
                    return SeqPacket::new(socket.into());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The descriptor numbers of every `SCM_RIGHTS` message in a control buffer filled by
/// `recvmsg` (zeroed before the call). Walks the headers like `CMSG_NXTHDR`, reading bytes,
/// never pointers, and stops at the first header that does not fit, so any buffer is safe
/// to walk (the fuzz target feeds it arbitrary bytes). Only numbers: owning them is
/// `sys::take_fds`'s job.
pub(crate) fn control_fds(buf: &[u8]) -> Vec<RawFd> {
    use std::mem::{offset_of, size_of};
    const HEADER: usize = size_of::<libc::cmsghdr>();
    /// `CMSG_ALIGN` rounds to `size_t`.
    const ALIGN: usize = size_of::<usize>();
    const LEVEL: usize = offset_of!(libc::cmsghdr, cmsg_level);
    const TYPE: usize = offset_of!(libc::cmsghdr, cmsg_type);
    let int_at = |h: &[u8], at: usize| {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&h[at..at + 4]);
        i32::from_ne_bytes(bytes)
    };
    let mut fds = Vec::new();
    let mut at: usize = 0;
    while let Some(h) = buf.get(at..at.saturating_add(HEADER)) {
        // cmsg_len is a size_t at offset 0 (glibc; musl's socklen_t plus zero padding reads
        // the same on little-endian targets).
        let mut len_bytes = [0; ALIGN];
        len_bytes.copy_from_slice(&h[..ALIGN]);
        let len = usize::from_ne_bytes(len_bytes);
        let (level, kind) = (int_at(h, LEVEL), int_at(h, TYPE));
        let end = match at.checked_add(len) {
            Some(end) if len >= HEADER && end <= buf.len() => end,
            _ => break, // the zeroed rest, or nothing the kernel wrote
        };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            fds.extend(
                buf[at + HEADER..end]
                    .chunks_exact(4)
                    .map(|raw| int_at(raw, 0)),
            );
        }
        match end.checked_next_multiple_of(ALIGN) {
            Some(next) => at = next,
            None => break,
        }
    }
    fds
}

/// The only unsafe code in `inpod`: taking ownership of descriptors the kernel installed, and
/// registering owned descriptors with the reactor.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;

    /// Every `SCM_RIGHTS` descriptor in a control buffer filled by `recvmsg` (zeroed before
    /// the call), owned.
    pub(super) fn take_fds(buf: &[u8]) -> Vec<OwnedFd> {
        super::control_fds(buf)
            .into_iter()
            // SAFETY: the kernel just installed each `fd` in our descriptor table for this
            // SCM_RIGHTS message; nothing else has seen the numbers, so taking sole ownership
            // (and closing them on drop) is sound.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect()
    }

    /// Registers `fd` with the tokio reactor (readable and writable).
    pub(super) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: `AsyncFd` needs the descriptor to stay open and the same for its lifetime.
        // It owns the `OwnedFd`, which closes only on drop, and callers never swap it out
        // (no `get_mut`).
        Ok(unsafe { AsyncFd::register(fd) }?)
    }
}

#[cfg(test)]
mod tests;
