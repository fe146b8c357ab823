use std::time::Duration;

use super::Backoff;

/// The xDS client's numbers, which these tests were first written for.
const INITIAL: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(15);

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

#[test]
fn exact_doubles_without_jitter_and_resets() {
    let mut b = Backoff::exact(Duration::from_secs(2), Duration::from_secs(60));
    let seen: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60]);
    // The draw is ignored.
    assert_eq!(b.next_delay_with(0.0), Duration::from_secs(60));
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(2));
}
