//! The roots the tunnel trusts, across CA root rotations.
//!
//! A CA that rotates its root starts signing under the new one at once, but peers keep the
//! certificates they already hold until they renew them — up to one certificate lifetime later.
//! So after seeing a new root we must keep trusting the old one for a while, or connections to
//! peers that have not renewed yet fail. A root stays while it was returned by the CA within the
//! last `retention` (two certificate lifetimes: one for peers to renew, one of slack).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio::time::Instant;

pub(super) struct TrustBundle {
    retention: Duration,
    /// Each root with when a CA answer last included it; oldest first seen first.
    roots: Vec<(CertificateDer<'static>, Instant)>,
}

impl TrustBundle {
    pub(super) fn new(retention: Duration) -> TrustBundle {
        TrustBundle {
            retention,
            roots: Vec::new(),
        }
    }

    /// Records that the CA vouched for `seen` at `now`, drops roots not seen for longer than
    /// the retention, and returns the store to put in new certificates.
    ///
    /// `seen` have already been parsed by a successful chain verification, so a root that
    /// rustls refuses here is skipped (with a warning) rather than failing the issuance.
    pub(super) fn observe(
        &mut self,
        seen: &[CertificateDer<'static>],
        now: Instant,
    ) -> Arc<RootCertStore> {
        for root in seen {
            match self.roots.iter_mut().find(|(known, _)| known == root) {
                Some((_, last_seen)) => *last_seen = now,
                None => {
                    if !self.roots.is_empty() {
                        tracing::info!(
                            roots = self.roots.len() + 1,
                            "the CA returned a new root; trusting it alongside the previous ones"
                        );
                    }
                    self.roots.push((root.clone(), now));
                }
            }
        }
        let retention = self.retention;
        self.roots.retain(|(_, last_seen)| {
            let keep = now.saturating_duration_since(*last_seen) <= retention;
            if !keep {
                tracing::info!("dropping a CA root not seen for {retention:?}");
            }
            keep
        });
        let mut store = RootCertStore::empty();
        for (root, _) in &self.roots {
            if let Err(e) = store.add(root.clone()) {
                tracing::warn!(error = %e, "a CA root cannot be used as a trust anchor");
            }
        }
        Arc::new(store)
    }

    /// The roots currently trusted, oldest first.
    pub(super) fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.iter().map(|(root, _)| root.clone()).collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.roots.len()
    }
}

#[cfg(test)]
mod tests;
