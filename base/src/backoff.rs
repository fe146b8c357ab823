//! Retry pacing: each failure waits twice as long as the one before, up to a cap, and a
//! success starts over. Every retrying part of the workspace uses this one type with its own
//! numbers (xDS reconnects, ZDS reconnects, certificate issuance, the CNI agent's per-pod
//! retries), so "how does X back off" has one answer to read.
//!
//! Jitter is on by default: the common case is many clients of one server (a fleet of tunnels
//! that lost the control plane at the same moment), and without it they would come back in
//! lock step. [`Backoff::exact`] is for schedules that are per node or per pod anyway.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The un-jittered delay the next failure waits.
    next: Duration,
    /// Spread each delay over ±50% of its base.
    jitter: bool,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`, each delay spread over ±50% (never above
    /// `max`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
            jitter: true,
        }
    }

    /// Like [`new`](Self::new) without jitter: exactly `initial`, `2 × initial`, … `max`.
    pub fn exact(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            jitter: false,
            ..Backoff::new(initial, max)
        }
    }

    /// Back to the initial delay: the thing being retried works again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt; each call doubles the following one up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// As [`next_delay`](Self::next_delay) with the random draw `unit` in `[0, 1)` given,
    /// which spreads the delay over ±50% of the base; the result never exceeds `max`. An exact
    /// backoff ignores `unit`.
    pub(crate) fn next_delay_with(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if !self.jitter {
            return base;
        }
        let factor = 0.5 + unit.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests;
