//! DNS lookups of service endpoints known by hostname only (ServiceEntries with DNS
//! resolution), made when a connection to such an endpoint is routed, as ztunnel does.
//!
//! One resolver serves the whole process: it reads the tunnel's own system configuration
//! (`/etc/resolv.conf`, `/etc/hosts`) once and keeps one cache for every pod. Queries leave from
//! the tunnel's network namespace, never a pod's: the tunnel's threads stay in it and only
//! upstream sockets are opened inside pods.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;

/// Answers kept, in number of responses: enough for every hostname endpoint of a large mesh.
const CACHE_SIZE: u64 = 4096;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// The system resolver configuration could not be read when the tunnel first needed it;
    /// every lookup reports it, since a restart is the only fix.
    #[error("DNS resolver configuration (/etc/resolv.conf): {0}")]
    Config(String),
    #[error("DNS lookup of {hostname:?}: {reason}")]
    Failed { hostname: String, reason: String },
}

/// The tunnel's DNS resolver, or why it could not be built.
#[derive(Clone)]
pub struct HostLookup {
    resolver: Result<TokioResolver, LookupError>,
}

impl std::fmt::Debug for HostLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resolver {
            Ok(_) => f.write_str("HostLookup(system configuration)"),
            Err(e) => write!(f, "HostLookup({e})"),
        }
    }
}

impl HostLookup {
    /// The process's resolver, built from the system configuration on first use. Built
    /// lazily so a tunnel that never meets a hostname endpoint never reads resolv.conf, and a
    /// broken resolv.conf refuses only those connections (with the reason) instead of the
    /// whole tunnel.
    pub fn shared() -> Arc<HostLookup> {
        static SHARED: OnceLock<Arc<HostLookup>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(HostLookup::from_system()))
            .clone()
    }

    fn from_system() -> HostLookup {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|mut builder| {
                let options = builder.options_mut();
                // Both families: which one is used is decided afterwards, from the service's
                // IP families and the family the client dialed.
                options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                options.cache_size = CACHE_SIZE;
                builder.build()
            })
            .map_err(|e| LookupError::Config(e.to_string()));
        if let Err(error) = &resolver {
            tracing::warn!(%error, "no DNS resolver: connections to hostname endpoints will be refused");
        }
        HostLookup { resolver }
    }

    /// Every address `hostname` resolves to (A and AAAA). An answer with no address is an
    /// error: the caller has nothing to connect to.
    pub async fn lookup(&self, hostname: &str) -> Result<Vec<IpAddr>, LookupError> {
        let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
        let failed = |reason: String| LookupError::Failed {
            hostname: hostname.to_owned(),
            reason,
        };
        let answer = resolver
            .lookup_ip(hostname)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let ips: Vec<IpAddr> = answer.iter().collect();
        if ips.is_empty() {
            return Err(failed("no A or AAAA record".to_owned()));
        }
        Ok(ips)
    }
}
