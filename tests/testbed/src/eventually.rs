//! Polling with a deadline instead of fixed sleeps.

use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_until`] re-evaluates its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Default deadline of [`assert_eventually!`](crate::assert_eventually).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Evaluates `cond` every [`POLL_INTERVAL`] until it returns true (→ `true`) or `deadline`
/// passes (→ `false`). The condition is always evaluated at least once, and once more at the
/// deadline, so a slow machine never fails a condition that became true while we slept.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return cond();
        }
        thread::sleep(POLL_INTERVAL.min(end - now));
    }
}

/// Asserts that a condition becomes true before a deadline (default 10 s).
///
/// ```text
/// assert_eventually!(server.accepted() == 1);
/// assert_eventually!(n2.established_on_port(15008)? == 1, Duration::from_secs(5),
///                    "no HBONE connection on {}", n2.name());
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, $crate::eventually::DEFAULT_DEADLINE)
    };
    ($cond:expr, $deadline:expr $(,)?) => {
        $crate::assert_eventually!($cond, $deadline, "{}", stringify!($cond))
    };
    ($cond:expr, $deadline:expr, $($msg:tt)+) => {{
        let deadline: ::std::time::Duration = $deadline;
        if !$crate::eventually::wait_until(deadline, || $cond) {
            panic!(
                "condition not met within {:?}: {}",
                deadline,
                format_args!($($msg)+)
            );
        }
    }};
}
