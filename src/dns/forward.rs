//! Forwarding a query, byte for byte, to the upstream resolver over the client's transport.
//!
//! The upstream is the nameserver the client addressed (its resolv.conf's, recovered by
//! [`origin`](super::origin) from the REDIRECT that brought the query here), so a pod with
//! its own `dnsConfig` keeps its resolver. Only when that is unknown, or is the proxy itself,
//! the tunnel's own resolver configuration (`/etc/resolv.conf`) is used, as ztunnel always
//! does. The query's socket is opened in the client's scope — inside the pod's namespace in
//! shared mode — with the tunnel's mark, so the capture rules let it leave and the resolver
//! sees the pod as the client, as it would without the proxy.
//!
//! Bounds: one upstream query at a time per permit of a process-wide budget
//! ([`MAX_UPSTREAM_QUERIES`]); each gives up after [`UPSTREAM_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::socket::{SocketFactory, Source};

/// How long one forwarded query may take before the client gets SERVFAIL: the classic
/// resolver timeout (resolv.conf's default `timeout:5`), which hickory uses too.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Upstream queries in flight across the whole process (every pod). Beyond it a query gets
/// SERVFAIL at once: a flood from one pod must not grow memory or sockets without bound.
pub(crate) const MAX_UPSTREAM_QUERIES: usize = 1024;

/// The largest DNS message (the TCP length prefix is 16 bits; UDP payloads fit in it too).
pub(crate) const MAX_MESSAGE: usize = 65_535;

/// Why a query could not be forwarded; each becomes SERVFAIL for the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolver: {0}")]
    NoUpstream(String),
    #[error("too many upstream queries in flight ({MAX_UPSTREAM_QUERIES})")]
    Busy,
    #[error("upstream {0} did not answer within {UPSTREAM_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The upstream resolvers and the process's budget of queries to them.
pub(crate) struct Upstream {
    /// The nameservers, in resolv.conf order, or why there are none.
    servers: Result<Vec<SocketAddr>, String>,
    timeout: Duration,
    permits: Arc<Semaphore>,
    /// When "busy" was last logged (seconds since `epoch`), to log it at most every 10 s.
    busy_logged: AtomicU64,
    epoch: Instant,
}

impl Upstream {
    /// The process's upstream: the tunnel's `/etc/resolv.conf`, read on first use.
    pub(crate) fn shared() -> Arc<Upstream> {
        static SHARED: OnceLock<Arc<Upstream>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Upstream::from_system()))
            .clone()
    }

    fn from_system() -> Upstream {
        let servers = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("/etc/resolv.conf: {e}"))
            .and_then(|(config, _)| {
                let servers: Vec<SocketAddr> = config
                    .name_servers()
                    .iter()
                    .map(|ns| {
                        let port = ns.connections.first().map_or(53, |c| c.port);
                        SocketAddr::new(ns.ip, port)
                    })
                    .fold(Vec::new(), |mut all, addr| {
                        if !all.contains(&addr) {
                            all.push(addr);
                        }
                        all
                    });
                if servers.is_empty() {
                    Err("/etc/resolv.conf names no nameserver".to_owned())
                } else {
                    Ok(servers)
                }
            });
        match &servers {
            Ok(servers) => tracing::info!(?servers, "DNS proxy upstream"),
            Err(error) => {
                tracing::warn!(%error, "DNS proxy: no upstream; names not in the mesh get SERVFAIL")
            }
        }
        Upstream::new(servers, UPSTREAM_TIMEOUT, MAX_UPSTREAM_QUERIES)
    }

    pub(crate) fn new(
        servers: Result<Vec<SocketAddr>, String>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Upstream {
        Upstream {
            servers,
            timeout,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            busy_logged: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The resolver for a query the client addressed to `addressed` (or why that is not
    /// known), received by the proxy at `proxy`: the addressed one, else the tunnel's first
    /// nameserver — never the proxy's own address, which would loop.
    pub(crate) fn choose(
        &self,
        addressed: Result<SocketAddr, String>,
        proxy: SocketAddr,
    ) -> Result<SocketAddr, ForwardError> {
        let upstream = match addressed {
            Ok(upstream) => upstream,
            Err(why) => {
                tracing::debug!(%why, "DNS proxy: the client's nameserver is not known; using the tunnel's");
                self.server()?
            }
        };
        if upstream == proxy {
            return Err(ForwardError::NoUpstream(format!(
                "{upstream} is the proxy's own address"
            )));
        }
        Ok(upstream)
    }

    fn server(&self) -> Result<SocketAddr, ForwardError> {
        // The first nameserver, as a resolver tries it first; it is the cluster DNS in a pod.
        match &self.servers {
            Ok(servers) => Ok(servers[0]),
            Err(why) => Err(ForwardError::NoUpstream(why.clone())),
        }
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, ForwardError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            let now = self.epoch.elapsed().as_secs() + 10;
            let last = self.busy_logged.load(Ordering::Relaxed);
            if now >= last + 10
                && self
                    .busy_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    limit = MAX_UPSTREAM_QUERIES,
                    "DNS proxy: upstream query budget exhausted; answering SERVFAIL (logged at most every 10s)"
                );
            }
            ForwardError::Busy
        })
    }

    /// Sends `query` to `upstream` over UDP from a socket of `sockets` and returns the upstream's reply as
    /// received, its id set back to the query's. The query leaves with a fresh random id, and
    /// only a reply with that id is taken (anything else on the socket is ignored).
    pub(crate) async fn udp(
        &self,
        sockets: &SocketFactory,
        upstream: SocketAddr,
        query: &[u8],
    ) -> Result<Vec<u8>, ForwardError> {
        let _permit = self.permit()?;
        let io = |source| ForwardError::Io { upstream, source };
        let (outgoing, id) = with_fresh_id(query);
        let socket = sockets.connect_udp(upstream).map_err(io)?;
        let exchange = async {
            socket.send(&outgoing).await.map_err(io)?;
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let len = socket.recv(&mut buf).await.map_err(io)?;
                if len >= 12 && buf[..2] == id.to_be_bytes() {
                    buf.truncate(len);
                    buf[..2].copy_from_slice(&query[..2]);
                    return Ok(buf);
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(upstream))?
    }

    /// Sends `query` over a new TCP connection (length-prefixed) and returns the reply.
    pub(crate) async fn tcp(
        &self,
        sockets: &SocketFactory,
        upstream: SocketAddr,
        query: &[u8],
    ) -> Result<Vec<u8>, ForwardError> {
        let _permit = self.permit()?;
        let io = |source| ForwardError::Io { upstream, source };
        let (outgoing, id) = with_fresh_id(query);
        let exchange = async {
            let mut stream = sockets.connect(upstream, Source::Any).await.map_err(io)?;
            let mut framed = Vec::with_capacity(outgoing.len() + 2);
            framed.extend_from_slice(&(outgoing.len() as u16).to_be_bytes());
            framed.extend_from_slice(&outgoing);
            stream.write_all(&framed).await.map_err(io)?;
            let len = stream.read_u16().await.map_err(io)?;
            let mut reply = vec![0u8; usize::from(len)];
            stream.read_exact(&mut reply).await.map_err(io)?;
            if reply.len() < 12 || reply[..2] != id.to_be_bytes() {
                return Err(io(std::io::Error::other("reply with another id")));
            }
            reply[..2].copy_from_slice(&query[..2]);
            Ok(reply)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(upstream))?
    }
}

/// `query` (at least a 12-byte header, which the handler checked) with a random id.
fn with_fresh_id(query: &[u8]) -> (Vec<u8>, u16) {
    let id: u16 = rand::random();
    let mut outgoing = query.to_vec();
    outgoing[..2].copy_from_slice(&id.to_be_bytes());
    (outgoing, id)
}
