//! Where the client sent its query, and so which resolver a forwarded query goes to: the
//! nameserver the pod addressed (its resolv.conf's), as the capture rules' REDIRECT hid it.
//!
//! TCP keeps the original destination on the accepted socket (`SO_ORIGINAL_DST`, read once
//! per connection); UDP does not, so a datagram's is looked up in conntrack
//! ([`conntrack`](super::conntrack)) — only when the query is forwarded, not for answers from
//! the mesh state. A query that was not redirected (sent to the proxy's own address) has no
//! other nameserver to go to; the caller then uses the tunnel's resolv.conf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::conntrack;
use super::handler::Transport;
use crate::socket::{canonical, SocketFactory};

/// How a query reached the proxy.
#[derive(Clone, Debug)]
pub(crate) enum Arrival {
    /// Over a TCP connection accepted on `local`; `original` is its `SO_ORIGINAL_DST`, or why
    /// that could not be read.
    Tcp {
        local: SocketAddr,
        original: Result<SocketAddr, String>,
    },
    /// In a UDP datagram received by the socket bound to `local`.
    Udp { local: SocketAddr },
}

impl Arrival {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Arrival::Tcp { .. } => Transport::Tcp,
            Arrival::Udp { .. } => Transport::Udp,
        }
    }

    /// The proxy's own address for this query (where the REDIRECT delivered it).
    pub(crate) fn local(&self, client: SocketAddr) -> SocketAddr {
        match self {
            Arrival::Tcp { local, .. } => canonical(*local),
            Arrival::Udp { local } => delivered_to(canonical(*local), client),
        }
    }
}

/// The nameserver `client` addressed, or why it is not known: not recoverable, or the proxy
/// itself (a client asking 127.0.0.1:15053 directly, or anything on the proxy's port — the
/// capture rules only redirect port 53, so such a query was never redirected, and forwarding
/// it there would loop).
pub(crate) fn addressed(
    arrival: &Arrival,
    client: SocketAddr,
    sockets: &SocketFactory,
) -> Result<SocketAddr, String> {
    let local = arrival.local(client);
    let original = match arrival {
        Arrival::Tcp { original, .. } => original.clone()?,
        Arrival::Udp { .. } => conntrack::original_destination(sockets, local, client)
            .map_err(|e| format!("UDP flow {client} → {local}: {e}"))?,
    };
    let original = canonical(original);
    if original == local || original.port() == local.port() {
        return Err(format!(
            "the client addressed the proxy itself ({original})"
        ));
    }
    Ok(original)
}

/// Where a datagram to a socket bound on `bound` arrived: that address, unless the socket is
/// bound to the unspecified address (or the other family's), where a REDIRECT of a locally
/// sent packet delivers to loopback (127.0.0.1 or ::1).
fn delivered_to(bound: SocketAddr, client: SocketAddr) -> SocketAddr {
    let same_family = bound.is_ipv4() == client.is_ipv4();
    if same_family && !bound.ip().is_unspecified() {
        return bound;
    }
    let loopback = match client.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(loopback, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tcp(original: &str) -> Arrival {
        Arrival::Tcp {
            local: addr("127.0.0.1:15053"),
            original: Ok(addr(original)),
        }
    }

    #[test]
    fn the_redirected_nameserver_is_the_upstream_the_proxy_itself_never_is() {
        let sockets = SocketFactory::current(None);
        let client = addr("10.77.1.10:40000");
        assert_eq!(
            addressed(&tcp("10.77.3.53:53"), client, &sockets),
            Ok(addr("10.77.3.53:53"))
        );
        assert_eq!(
            addressed(&tcp("[::ffff:10.77.3.53]:53"), client, &sockets),
            Ok(addr("10.77.3.53:53"))
        );
        for own in ["127.0.0.1:15053", "10.77.1.10:15053", "[::1]:15053"] {
            assert!(addressed(&tcp(own), client, &sockets).is_err(), "{own}");
        }
        let unknown = Arrival::Tcp {
            local: addr("127.0.0.1:15053"),
            original: Err("no SO_ORIGINAL_DST".into()),
        };
        assert!(addressed(&unknown, client, &sockets).is_err());
    }

    #[test]
    fn an_unspecified_bind_is_reached_on_loopback_of_the_clients_family() {
        let v4 = addr("10.0.0.1:1");
        let v6 = addr("[fd00::1]:1");
        assert_eq!(
            delivered_to(addr("0.0.0.0:15053"), v4),
            addr("127.0.0.1:15053")
        );
        assert_eq!(
            delivered_to(addr("[::]:15053"), v4),
            addr("127.0.0.1:15053")
        );
        assert_eq!(delivered_to(addr("[::]:15053"), v6), addr("[::1]:15053"));
        assert_eq!(
            delivered_to(addr("127.0.0.1:15053"), v4),
            addr("127.0.0.1:15053")
        );
    }
}
