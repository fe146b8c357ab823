//! Readiness as a probe answers it: ready when every condition holds, and when not, which
//! one is missing (the answer's body, so `kubectl describe` says why).
//!
//! Each condition is a `watch` flag owned by the part that knows it (the installer, the
//! reconciler, the start-up sequence); the readiness only reads them, so nothing is mirrored
//! and nothing can go stale.

use tokio::sync::watch;

/// A set of conditions, each a flag and what to say while it is false. Cloning is cheap (the
/// flags are shared).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Condition {
    flag: watch::Receiver<bool>,
    unmet: &'static str,
}

impl Readiness {
    /// No conditions yet: ready.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Adds a condition: not ready while `flag` is false, saying `unmet` (e.g. "the first
    /// sync with the Kubernetes API is not done yet").
    pub fn require(mut self, flag: watch::Receiver<bool>, unmet: &'static str) -> Readiness {
        self.conditions.push(Condition { flag, unmet });
        self
    }

    /// Adds a condition that starts unmet and returns its setter, for a flag that has no other
    /// owner yet.
    pub fn condition(&mut self, unmet: &'static str) -> watch::Sender<bool> {
        let (set, flag) = watch::channel(false);
        self.conditions.push(Condition { flag, unmet });
        set
    }

    /// `None` when ready, otherwise the first condition (in the order added) that is unmet.
    /// A flag whose owner is gone keeps its last value.
    pub fn missing(&self) -> Option<&'static str> {
        self.conditions
            .iter()
            .find(|c| !*c.flag.borrow())
            .map(|c| c.unmet)
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_none()
    }
}

#[cfg(test)]
mod tests;
