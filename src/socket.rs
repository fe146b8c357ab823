//! Creating the tunnel's TCP sockets: in which network namespace, with which mark and source.
//!
//! Every listener and upstream connection goes through a `SocketFactory`, so "which namespace
//! does this socket live in" is a parameter of the data path rather than an accident of the
//! calling thread. Dedicated mode uses the tunnel's own namespace; in-pod mode gives each pod a
//! factory bound to that pod's namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use nodetunnel_base::netns::NetnsHandle;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use crate::config::TcpKeepalive;

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
    /// Bind to a foreign address with IP_TRANSPARENT: inbound delivery inside a pod uses the
    /// client's address, so the app sees the real client. The in-pod rules route the app's
    /// replies back to the tunnel (connmark 0x111 → table 100 → local).
    Transparent(IpAddr),
}

#[derive(Clone, Debug)]
pub struct SocketFactory {
    /// `None`: the namespace of the calling thread (the tunnel's own).
    netns: Option<Arc<NetnsHandle>>,
    mark: Option<u32>,
    /// SO_REUSEPORT on listeners.
    port_reuse: bool,
    /// TCP keepalive on upstream connections (`KEEPALIVE_*`).
    keepalive: Option<TcpKeepalive>,
}

impl SocketFactory {
    /// Sockets in the tunnel's own namespace, marked with `mark`.
    pub fn current(mark: Option<u32>) -> SocketFactory {
        SocketFactory {
            netns: None,
            mark,
            port_reuse: true,
            keepalive: None,
        }
    }

    /// Sockets in `netns`, marked with `mark`.
    pub fn in_netns(netns: Arc<NetnsHandle>, mark: Option<u32>) -> SocketFactory {
        SocketFactory {
            netns: Some(netns),
            mark,
            port_reuse: true,
            keepalive: None,
        }
    }

    /// Turns SO_REUSEPORT on listeners on or off (`INPOD_PORT_REUSE`).
    pub fn with_port_reuse(mut self, port_reuse: bool) -> SocketFactory {
        self.port_reuse = port_reuse;
        self
    }

    /// Turns on TCP keepalive on the upstream connections this factory makes.
    pub fn with_keepalive(mut self, keepalive: Option<TcpKeepalive>) -> SocketFactory {
        self.keepalive = keepalive;
        self
    }

    /// A listener with SO_REUSEPORT (so a new tunnel can take over while the old one drains).
    /// An unspecified IPv6 address listens dual-stack, falling back to IPv4 where the
    /// namespace has no IPv6. Blocks briefly on a fresh thread when the factory has a
    /// namespace: call it at set-up, not per connection.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let port_reuse = self.port_reuse;
        let bind = move || bind_dual_stack(addr, port_reuse);
        let std_listener = match &self.netns {
            None => bind()?,
            Some(netns) => netns.run(bind)??,
        };
        let listener = TcpListener::from_std(std_listener.into())?;
        Ok(listener)
    }

    /// Like [`listen`](Self::listen), but the namespace is entered on a shared `netns`
    /// thread, so the caller's (tokio) thread never blocks on a thread spawn.
    pub async fn listen_async(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let Some(netns) = &self.netns else {
            return self.listen(addr);
        };
        let port_reuse = self.port_reuse;
        let std_listener = netns
            .run_async(move || bind_dual_stack(addr, port_reuse))
            .await??;
        TcpListener::from_std(std_listener.into())
    }

    /// A UDP socket bound to `addr` in this factory's namespace (SO_REUSEPORT as the TCP
    /// listeners, so a replacement tunnel can bind beside this one), entered on a shared
    /// `netns` thread like [`listen_async`](Self::listen_async). Unmarked: it only answers.
    pub async fn bind_udp_async(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let port_reuse = self.port_reuse;
        let bind = move || bind_udp(addr, port_reuse);
        let socket = match &self.netns {
            None => bind()?,
            Some(netns) => netns.run_async(bind).await??,
        };
        UdpSocket::from_std(socket.into())
    }

    /// A UDP socket connected to `dst`, created in this factory's namespace with its mark (so
    /// in-pod capture rules let a forwarded DNS query pass instead of redirecting it back).
    pub fn connect_udp(&self, dst: SocketAddr) -> io::Result<UdpSocket> {
        let mark = self.mark;
        let create = move || -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.set_nonblocking(true)?;
            socket.connect(&dst.into())?;
            Ok(socket)
        };
        let socket = match &self.netns {
            None => create()?,
            // On this thread, synchronously (nothing awaited while inside the namespace).
            Some(netns) => netns.run_here(create)??,
        };
        UdpSocket::from_std(socket.into())
    }

    /// Runs `create` in this factory's namespace, synchronously on this thread, so the socket
    /// it opens lives there (a netlink socket asking that namespace's conntrack, say). Nothing
    /// may be awaited inside; the mark is the caller's to set.
    pub fn create_here<T>(&self, create: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        match &self.netns {
            None => create(),
            Some(netns) => netns.run_here(create)?,
        }
    }

    /// Connects to `dst` from a socket created in this factory's namespace, with its mark.
    pub async fn connect(&self, dst: SocketAddr, source: Source) -> io::Result<TcpStream> {
        let (mark, keepalive) = (self.mark, self.keepalive);
        let create = move || {
            let socket = upstream_socket(dst, mark, source)?;
            if let Some(keepalive) = &keepalive {
                socket.set_tcp_keepalive(&socket2_keepalive(keepalive))?;
            }
            Ok::<_, io::Error>(socket)
        };
        let socket = match &self.netns {
            None => create()?,
            // On this thread, synchronously (nothing awaited while inside the namespace).
            Some(netns) => netns.run_here(create)??,
        };
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let stream = socket.connect(dst).await?;
        Ok(stream)
    }
}

/// A non-blocking, not yet connected socket for `dst`, bound as `source` asks.
fn upstream_socket(dst: SocketAddr, mark: Option<u32>, source: Source) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_tcp_nodelay(true)?;
    match source {
        Source::Any => {}
        Source::Local(ip) => socket.bind(&SocketAddr::new(ip, 0).into())?,
        Source::Transparent(ip) => {
            if dst.is_ipv6() {
                socket.set_ip_transparent_v6(true)?;
            } else {
                socket.set_ip_transparent_v4(true)?;
            }
            // Port 0: the kernel picks a free port for the foreign address, so concurrent
            // deliveries from one client never collide.
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// `[::]` listens dual-stack; where the namespace has no IPv6 it falls back to `0.0.0.0`.
fn bind_dual_stack(addr: SocketAddr, port_reuse: bool) -> io::Result<Socket> {
    match bind_listener(addr, port_reuse) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && is_no_ipv6(&e) => {
            bind_listener(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                port_reuse,
            )
        }
        other => other,
    }
}

fn bind_listener(addr: SocketAddr, port_reuse: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(port_reuse)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr, port_reuse: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(port_reuse)?;
    socket.bind(&addr.into())?;
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

/// Turns on TCP keepalive on `stream` with `keepalive`'s timing.
pub fn set_keepalive(stream: &TcpStream, keepalive: &TcpKeepalive) -> io::Result<()> {
    SockRef::from(stream).set_tcp_keepalive(&socket2_keepalive(keepalive))
}

fn socket2_keepalive(keepalive: &TcpKeepalive) -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(keepalive.time)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries)
}

/// Makes closing `stream` abort it (SO_LINGER 0: the kernel sends RST and drops unsent data)
/// instead of ending it with FIN, so the peer learns the connection was cut, not finished.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO))
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

    #[tokio::test]
    async fn upstream_connections_carry_the_configured_keepalive() {
        let listener = SocketFactory::current(None)
            .listen("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let keepalive = TcpKeepalive {
            time: std::time::Duration::from_secs(180),
            interval: std::time::Duration::from_secs(170),
            retries: 9,
        };
        let factory = SocketFactory::current(None).with_keepalive(Some(keepalive));
        let stream = factory
            .connect(listener.local_addr().unwrap(), Source::Any)
            .await
            .unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap().as_secs(), 180);
        assert_eq!(sock.tcp_keepalive_interval().unwrap().as_secs(), 170);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 9);
        let (accepted, _) = listener.accept().await.unwrap();
        set_keepalive(&accepted, &keepalive).unwrap();
        assert!(SockRef::from(&accepted).keepalive().unwrap());
    }

    #[test]
    fn canonicalizes_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
