//! Reconnect pacing: exponential with jitter, so a control plane that is down is not hammered
//! and a fleet of tunnels that lost it at the same moment does not return in lock step.

use std::time::Duration;

/// First reconnect delay after a failure.
pub(super) const INITIAL: Duration = Duration::from_millis(100);
/// The delay stops doubling here (istiod restarts and rollouts are over within this).
pub(super) const MAX: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    /// The un-jittered delay the next failure waits.
    next: Duration,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// Back to the initial delay: called once a stream delivered a response, i.e. the
    /// control plane works again.
    pub(super) fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt; each call doubles the following one up to `max`.
    pub(super) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// As [`next_delay`](Self::next_delay) with the random draw `unit` in `[0, 1)` given,
    /// which spreads the delay over ±50% of the base; the result never exceeds `max`.
    pub(super) fn next_delay_with(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = 0.5 + unit.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_jitter_bounds() {
        let mut b = Backoff::new(INITIAL, MAX);
        let mut base = INITIAL;
        for i in 0..20 {
            let unit = (i as f64 * 0.37) % 1.0;
            let d = b.next_delay_with(unit);
            assert!(d >= base / 2, "attempt {i}: {d:?} below half of {base:?}");
            assert!(
                d <= (base * 3 / 2).min(MAX),
                "attempt {i}: {d:?} above bound"
            );
            base = (base * 2).min(MAX);
        }
        // Far along, the delay sits in [MAX/2, MAX].
        for unit in [0.0, 0.5, 0.999] {
            let d = b.next_delay_with(unit);
            assert!(d >= MAX / 2 && d <= MAX, "{d:?}");
        }
    }

    #[test]
    fn extremes_of_the_random_draw() {
        let mut b = Backoff::new(INITIAL, MAX);
        assert_eq!(b.next_delay_with(0.0), INITIAL / 2);
        let mut b = Backoff::new(INITIAL, MAX);
        assert_eq!(b.next_delay_with(1.0), INITIAL * 3 / 2);
        // Out-of-range draws are clamped rather than producing zero or huge delays.
        let mut b = Backoff::new(INITIAL, MAX);
        assert_eq!(b.next_delay_with(-3.0), INITIAL / 2);
    }

    #[test]
    fn reset_returns_to_the_initial_delay() {
        let mut b = Backoff::new(INITIAL, MAX);
        for _ in 0..10 {
            b.next_delay_with(0.5);
        }
        assert_eq!(b.next_delay_with(0.5), MAX);
        b.reset();
        assert_eq!(b.next_delay_with(0.5), INITIAL);
        assert_eq!(b.next_delay_with(0.5), INITIAL * 2);
    }

    #[test]
    fn random_delays_are_never_zero() {
        let mut b = Backoff::new(INITIAL, MAX);
        for _ in 0..100 {
            assert!(b.next_delay() >= INITIAL / 2);
        }
    }
}
