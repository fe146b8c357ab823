//! The rustls configs built from one workload certificate, kept alongside it.
//!
//! Building a config is costly (key parsing, verifier and root store set-up) and the result
//! depends only on the certificate, plus the expected server identities for a client config.
//! So each [`WorkloadCert`](super::WorkloadCert) carries one of these caches: every connection
//! presenting that certificate shares its configs, and renewal, which replaces the certificate,
//! starts over with an empty cache, so no config ever outlives its certificate. This module only
//! stores configs; `tls` decides how they are built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::{ClientConfig, ServerConfig};

use super::Identity;

/// Lazily built configs for one certificate: one server config, and one client config per set of
/// expected server identities.
///
/// The client map is bounded by [`TlsConfigs::MAX_CLIENT_CONFIGS`]. Expected-identity sets come
/// from service config (a destination workload's identity plus its service's SANs), not from
/// peers, but a source that talks to many destinations in a large mesh would otherwise keep a
/// config (with its own copy of the private key) per destination until the certificate is
/// renewed. Past the bound an arbitrary entry is evicted; a miss only costs a rebuild, which is
/// what every connection paid before this cache existed.
#[derive(Default)]
pub(crate) struct TlsConfigs {
    server: OnceLock<Arc<ServerConfig>>,
    clients: Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// Upper bound on cached client configs per certificate.
    pub(crate) const MAX_CLIENT_CONFIGS: usize = 64;

    /// The server config, built by `build` on first use.
    ///
    /// Concurrent first calls may each build one; all get the config stored first.
    pub(crate) fn server<E>(
        &self,
        build: impl FnOnce() -> Result<Arc<ServerConfig>, E>,
    ) -> Result<Arc<ServerConfig>, E> {
        if let Some(config) = self.server.get() {
            return Ok(config.clone());
        }
        let config = build()?;
        Ok(self.server.get_or_init(|| config).clone())
    }

    /// The client config for servers in `expected` (order-sensitive), built by `build` on a miss.
    ///
    /// `build` runs without the lock held; concurrent misses for the same set may each build
    /// one, and all get the config stored first.
    pub(crate) fn client<E>(
        &self,
        expected: Vec<Identity>,
        build: impl FnOnce(Vec<Identity>) -> Result<Arc<ClientConfig>, E>,
    ) -> Result<Arc<ClientConfig>, E> {
        if let Some(config) = self.lock_clients().get(expected.as_slice()) {
            return Ok(config.clone());
        }
        let config = build(expected.clone())?;
        let mut clients = self.lock_clients();
        if clients.len() >= Self::MAX_CLIENT_CONFIGS && !clients.contains_key(&expected) {
            if let Some(victim) = clients.keys().next().cloned() {
                clients.remove(&victim);
            }
        }
        Ok(clients.entry(expected).or_insert(config).clone())
    }

    /// How many client configs are cached, for debugging and tests.
    #[cfg(test)]
    pub(crate) fn client_count(&self) -> usize {
        self.lock_clients().len()
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<Identity>, Arc<ClientConfig>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}
