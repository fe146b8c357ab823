//! Creating the tunnel's TCP sockets: in which network namespace, with which mark and source.
//!
//! Every listener and upstream connection goes through a `SocketFactory`, so "which namespace
//! does this socket live in" is a parameter of the data path rather than an accident of the
//! calling thread. Dedicated mode uses the tunnel's own namespace; in-pod mode gives each pod a
//! factory bound to that pod's namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::netns::Netns;

/// SO_MARK on every socket the tunnel opens, so the capture rules let its own traffic pass
/// (Istio's 1337).
pub const TUNNEL_MARK: u32 = 0x539;

/// How an upstream connection picks its source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Let the kernel choose.
    Any,
    /// Bind to an address local to the namespace (e.g. the workload's own IP).
    Local(IpAddr),
}

#[derive(Clone, Debug)]
pub struct SocketFactory {
    /// `None`: the namespace of the calling thread (the tunnel's own).
    netns: Option<Arc<Netns>>,
    mark: Option<u32>,
}

impl SocketFactory {
    /// Sockets in the tunnel's own namespace, marked with `mark`.
    pub fn current(mark: Option<u32>) -> SocketFactory {
        SocketFactory { netns: None, mark }
    }

    /// Sockets in `netns`, marked with `mark`.
    pub fn in_netns(netns: Arc<Netns>, mark: Option<u32>) -> SocketFactory {
        SocketFactory {
            netns: Some(netns),
            mark,
        }
    }

    fn create<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.netns {
            None => f(),
            Some(netns) => netns.run(f)?,
        }
    }

    /// A listener with SO_REUSEPORT (so a new tunnel can take over while the old one drains).
    /// An unspecified IPv6 address listens dual-stack, falling back to IPv4 where the
    /// namespace has no IPv6.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std_listener = self.create(|| match bind_listener(addr) {
            Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && is_no_ipv6(&e) => {
                bind_listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
            }
            other => other,
        })?;
        let listener = TcpListener::from_std(std_listener.into())?;
        Ok(listener)
    }

    /// Connects to `dst` from a socket created in this factory's namespace, with its mark.
    pub async fn connect(&self, dst: SocketAddr, source: Source) -> io::Result<TcpStream> {
        let mark = self.mark;
        let socket = self.create(|| {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.set_tcp_nodelay(true)?;
            if let Source::Local(ip) = source {
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            }
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let stream = socket.connect(dst).await?;
        Ok(stream)
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// The destination a connection had before an iptables REDIRECT sent it to us
/// (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST). IPv4-mapped addresses are returned as IPv4.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let peer = stream.peer_addr()?;
    let is_v4 = match peer.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let addr = if is_v4 {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST returned a non-IP address"))?;
    Ok(canonical(addr))
}

/// Turns IPv4-mapped IPv6 addresses (seen on dual-stack sockets) back into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn listens_with_reuseport_and_connects_from_a_chosen_source() {
        let factory = SocketFactory::current(None);
        let a = factory.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local_addr().unwrap().port();
        // SO_REUSEPORT: a second listener on the same port is allowed (hand-over on upgrade).
        let b = factory
            .listen(SocketAddr::new([127, 0, 0, 1].into(), port))
            .unwrap();
        drop(b);
        let dst = a.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (mut s, peer) = a.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            (peer, buf)
        });
        let mut c = factory
            .connect(dst, Source::Local("127.0.0.2".parse().unwrap()))
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        let (peer, buf) = accept.await.unwrap();
        assert_eq!(peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn canonicalizes_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
