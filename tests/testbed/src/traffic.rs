//! Test traffic: servers (echo, bulk, hash-after-EOF) with accept counters, clients that bind a
//! pod address, and a position-dependent byte pattern so both ends verify byte-exactness without
//! holding the data. [`continuous`]: traffic that keeps going while a test upgrades the mesh.

pub mod continuous;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrIn};
use sha2::{Digest, Sha256};

use crate::netns::Netns;

/// Read/write timeout on every socket the helpers create: a broken tunnel fails a test instead
/// of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------- pattern

/// The byte at stream offset `i` of pattern `seed`: 8-byte words of splitmix64(seed, i / 8).
/// Every offset has its own value, so loss, duplication, reordering or corruption anywhere
/// shows up as a mismatch.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fills `buf` with the bytes at offsets `offset..offset + buf.len()`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = offset;
        let mut i = 0;
        while i < buf.len() {
            let word = self.word(pos / 8);
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
            pos += n as u64;
        }
    }

    /// `len` bytes from offset 0.
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(0, &mut v);
        v
    }

    /// Writes `len` bytes of the pattern to `w`.
    pub fn write_to(&self, w: &mut impl Write, len: u64) -> io::Result<()> {
        let mut buf = vec![0; CHUNK];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            self.fill(off, &mut buf[..n]);
            w.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    /// Reads exactly `len` bytes from `r`, comparing them with the pattern. Returns the offset
    /// of the first mismatching byte, if any; a short stream is an `UnexpectedEof` error.
    pub fn verify_from(&self, r: &mut impl Read, len: u64) -> io::Result<Option<u64>> {
        let mut got = vec![0; CHUNK];
        let mut want = vec![0; CHUNK];
        let mut off = 0;
        let mut first_mismatch = None;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            let read = match r.read(&mut got[..n]) {
                // A read with SO_RCVTIMEO returns EINTR when the process was stopped and
                // continued (SIGSTOP/SIGCONT, a debugger), even without a signal handler.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended after {off} of {len} bytes"),
                ));
            }
            if first_mismatch.is_none() {
                self.fill(off, &mut want[..read]);
                if got[..read] != want[..read] {
                    let i = (0..read).find(|&i| got[i] != want[i]).unwrap_or(0);
                    first_mismatch = Some(off + i as u64);
                }
            }
            off += read as u64;
        }
        Ok(first_mismatch)
    }
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- clients

/// Connects to `dst` from `src` (bound before connecting, so the tunnel sees the pod address).
/// Must run inside the pod's namespace (e.g. in [`Netns::run`]). Sets [`IO_TIMEOUT`].
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::other("only IPv4 destinations are supported"));
    };
    let fd: OwnedFd = sock::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sock::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    sock::connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends `request`, then reads until the peer closes; returns what came back. A reset counts
/// as closed (what arrived before it is returned). A connection that is neither answered nor
/// closed within the stream's read timeout is an error (`TimedOut`), so a caller asserting
/// "refused" cannot mistake a hanging connection for a closed one.
pub fn request_then_read_all(stream: &mut TcpStream, request: &[u8]) -> io::Result<Vec<u8>> {
    let _ = stream.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "neither answered nor closed within the read timeout ({} bytes so far)",
                        got.len()
                    ),
                ))
            }
            Err(_) => return Ok(got),
        }
    }
}

/// Writes `data`, reads the same number of bytes back and checks they are equal.
pub fn echo_roundtrip(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let owned = data.to_vec();
    let w = thread::spawn(move || writer.write_all(&owned));
    let mut back = vec![0; data.len()];
    let read = stream.read_exact(&mut back);
    w.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    read?;
    if back != data {
        let i = (0..data.len()).find(|&i| back[i] != data[i]).unwrap_or(0);
        return Err(io::Error::other(format!(
            "echo differs at byte {i} of {}",
            data.len()
        )));
    }
    Ok(())
}

/// Outcome of [`bulk_exchange`], seen from both ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkReport {
    /// Bytes the client sent / the server said it received.
    pub up_sent: u64,
    pub up_received_by_server: u64,
    pub up_first_mismatch: Option<u64>,
    /// Bytes the server sent (as requested) / the client received and verified.
    pub down_expected: u64,
    pub down_received: u64,
    pub down_first_mismatch: Option<u64>,
}

impl BulkReport {
    /// Both directions complete and byte-exact.
    pub fn is_exact(&self) -> bool {
        self.up_sent == self.up_received_by_server
            && self.down_expected == self.down_received
            && self.up_first_mismatch.is_none()
            && self.down_first_mismatch.is_none()
    }
}

const NONE: u64 = u64::MAX;

/// Client side of the [`bulk_handler`] protocol: sends `up` bytes of pattern `seed` while
/// receiving `down` bytes of pattern `seed + 1`, both at once; returns what each side verified.
pub fn bulk_exchange(
    stream: &mut TcpStream,
    seed: u64,
    up: u64,
    down: u64,
) -> io::Result<BulkReport> {
    let mut header = Vec::with_capacity(32);
    for v in [seed, up, seed.wrapping_add(1), down] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    stream.write_all(&header)?;
    let mut writer = stream.try_clone()?;
    let w = thread::spawn(move || Pattern::new(seed).write_to(&mut writer, up));
    let down_first_mismatch = Pattern::new(seed.wrapping_add(1)).verify_from(stream, down)?;
    let mut trailer = [0u8; 16];
    stream.read_exact(&mut trailer)?;
    w.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    let received = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
    let mismatch = u64::from_be_bytes(trailer[8..].try_into().expect("8 bytes"));
    Ok(BulkReport {
        up_sent: up,
        up_received_by_server: received,
        up_first_mismatch: (mismatch != NONE).then_some(mismatch),
        down_expected: down,
        down_received: down,
        down_first_mismatch,
    })
}

/// Server side of [`bulk_exchange`]: header `[seed_up, len_up, seed_down, len_down]` (u64 BE),
/// then both directions at once; finally a trailer `[bytes received, first mismatch or MAX]`.
pub fn bulk_handler(mut stream: TcpStream) -> io::Result<()> {
    let mut header = [0u8; 32];
    stream.read_exact(&mut header)?;
    let word = |i: usize| u64::from_be_bytes(header[i * 8..i * 8 + 8].try_into().expect("8"));
    let (seed_up, up, seed_down, down) = (word(0), word(1), word(2), word(3));
    let mut writer = stream.try_clone()?;
    let w = thread::spawn(move || Pattern::new(seed_down).write_to(&mut writer, down));
    let mismatch = Pattern::new(seed_up).verify_from(&mut stream, up)?;
    w.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    let mut trailer = up.to_be_bytes().to_vec();
    trailer.extend_from_slice(&mismatch.unwrap_or(NONE).to_be_bytes());
    stream.write_all(&trailer)?;
    stream.shutdown(Shutdown::Write)
}

/// Copies everything back until EOF, then half-closes.
pub fn echo_handler(mut stream: TcpStream) -> io::Result<()> {
    let mut reader = stream.try_clone()?;
    io::copy(&mut reader, &mut stream)?;
    stream.shutdown(Shutdown::Write)
}

/// Reads until EOF and only THEN answers `"<byte count> <sha256 hex>\n"` and closes: a tunnel
/// that does not carry the client's half-close makes this server wait forever (until timeout).
pub fn hash_after_eof_handler(mut stream: TcpStream) -> io::Result<()> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    writeln!(stream, "{} {}", data.len(), sha256_hex(&data))?;
    stream.shutdown(Shutdown::Write)
}

// ---------------------------------------------------------------- server

type Handler = dyn Fn(TcpStream) -> io::Result<()> + Send + Sync;

/// A TCP server running in a namespace: one thread per connection, counting what it accepts.
/// Dropping it stops accepting (connections in progress finish on their own).
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Binds `addr` inside `ns` and serves each connection with `handler`.
    pub fn start(
        ns: &Netns,
        addr: SocketAddr,
        handler: impl Fn(TcpStream) -> io::Result<()> + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let (tx, rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, a, p, e) = (
            stopping.clone(),
            accepted.clone(),
            peers.clone(),
            errors.clone(),
        );
        ns.spawn(move || {
            let listener = match TcpListener::bind(addr).and_then(|l| Ok((l.try_clone()?, l))) {
                Ok((mine, theirs)) => {
                    let _ = tx.send(Ok(theirs));
                    mine
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                    return;
                }
            };
            accept_loop(listener, handler, s, a, p, e);
        });
        let listener = rx
            .recv()
            .map_err(|_| io::Error::other("server thread died before binding"))??;
        Ok(Server {
            addr,
            listener,
            stopping,
            accepted,
            peers,
            errors,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Peer addresses of the accepted connections, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Errors returned by handlers so far (a failing handler does not stop the server).
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a thread blocked in accept(2) (Linux).
        let _ = sock::shutdown(self.listener.as_raw_fd(), sock::Shutdown::Both);
    }
}

fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    stopping: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    loop {
        let conn = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, peer)) = conn else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        peers.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
        let (handler, errors) = (handler.clone(), errors.clone());
        thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            if let Err(e) = handler(stream) {
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{peer}: {e}"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_dependent_and_chunking_invariant() {
        let p = Pattern::new(7);
        let whole = p.bytes(1000);
        let mut part = vec![0; 13];
        p.fill(501, &mut part);
        assert_eq!(&whole[501..514], &part[..]);
        assert_ne!(&whole[0..8], &whole[8..16]);
        assert_ne!(Pattern::new(8).bytes(64), p.bytes(64));
    }

    #[test]
    fn verify_finds_the_first_corrupted_byte() {
        let p = Pattern::new(3);
        let mut data = p.bytes(200_000);
        assert_eq!(p.verify_from(&mut &data[..], 200_000).unwrap(), None);
        data[150_001] ^= 1;
        assert_eq!(
            p.verify_from(&mut &data[..], 200_000).unwrap(),
            Some(150_001)
        );
        let err = p.verify_from(&mut &data[..100], 200).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
