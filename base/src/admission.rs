//! Caps on a TLS listener's connections, overall and per source address: the tunnel's inbound
//! HBONE (15008, shared by every listener group of the process, since in shared mode all pods'
//! sockets are its descriptors) and the control plane's gRPC port. The per-address cap keeps
//! one noisy or hostile peer from taking every place.
//!
//! A connection over a cap is closed at accept, before any TLS work; the refusal is logged at
//! most every 10 s with the count refused since the last line, naming the setting to raise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a cap being hit is logged, at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a listener's log lines call it and its two caps' settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    /// e.g. "inbound HBONE"
    pub listener: &'static str,
    /// e.g. "HBONE_MAX_CONNECTIONS"
    pub total_setting: &'static str,
    /// e.g. "HBONE_MAX_CONNECTIONS_PER_IP"
    pub per_source_setting: &'static str,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Total { limit: usize },
    PerSource { limit: usize },
}

/// A refusal as the log says it: how many are open and which setting caps them.
struct Explained(Refusal, Names);

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Explained(refusal, names) = self;
        let what = names.listener;
        match refusal {
            Refusal::Total { limit } => write!(
                f,
                "{limit} {what} connections are open ({})",
                names.total_setting
            ),
            Refusal::PerSource { limit } => write!(
                f,
                "{limit} {what} connections from this address are open ({})",
                names.per_source_setting
            ),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    refused_since_log: u64,
    last_log: Option<Instant>,
}

/// The caps and what is held under them.
pub struct ConnectionLimits {
    names: Names,
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection's place; dropping it frees the place.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(names: Names, max_total: usize, max_per_source: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            names,
            max_total,
            max_per_source,
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `source`, or which cap is full. A refusal is logged
    /// (rate-limited) here, so every caller says the same thing.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, Refusal> {
        let mut counts = self.lock();
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        let refusal = if counts.total >= self.max_total {
            Some(Refusal::Total {
                limit: self.max_total,
            })
        } else if from_source >= self.max_per_source {
            Some(Refusal::PerSource {
                limit: self.max_per_source,
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            counts.refused_since_log += 1;
            if counts.last_log.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
                tracing::warn!(
                    listener = self.names.listener,
                    src = %source,
                    refused = counts.refused_since_log,
                    "at the connection cap: {}; closing new connections",
                    Explained(refusal, self.names)
                );
                counts.last_log = Some(Instant::now());
                counts.refused_since_log = 0;
            }
            return Err(refusal);
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(Admitted {
            limits: self.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_overall_and_per_source_and_frees_places_on_drop() {
        let names = Names {
            listener: "test",
            total_setting: "TEST_MAX",
            per_source_setting: "TEST_MAX_PER_IP",
        };
        let limits = ConnectionLimits::new(names, 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::PerSource { limit: 2 }));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Total { limit: 3 }));
        drop(a1);
        let _a3 = limits.admit(a).unwrap();
        assert!(limits.admit(b).is_err());
        assert_eq!(limits.lock().by_source.len(), 2);
    }
}
