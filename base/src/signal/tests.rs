use std::time::Duration;

use nix::sys::signal::{raise, Signal as NixSignal};

use super::{shutdown, Signal};

/// Signals go to the whole test process, so both cases run in one test, one after the other.
#[tokio::test]
async fn a_signal_raised_before_the_first_poll_is_reported_by_name() {
    for (raised, expected) in [
        (NixSignal::SIGTERM, Signal::Terminate),
        (NixSignal::SIGINT, Signal::Interrupt),
    ] {
        let stop = shutdown().expect("installing the handlers");
        // Delivered before the future is polled: registration is eager, so it is not lost
        // (and does not kill the test process).
        raise(raised).expect("raising the signal");
        let got = tokio::time::timeout(Duration::from_secs(5), stop)
            .await
            .expect("the shutdown future completes");
        assert_eq!(got, expected);
        assert_eq!(got.number(), raised as i32);
    }
    assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
    assert_eq!(Signal::Interrupt.to_string(), "SIGINT");
}
