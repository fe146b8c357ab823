//! Reconnect pacing for the xDS stream: the shared [`Backoff`] (doubling, jittered ±50%, so a
//! control plane that is down is not hammered and a fleet of tunnels that lost it at the same
//! moment does not return in lock step) with the xDS client's numbers. Its tests live with the
//! type in `nodetunnel-base`, written against these numbers.

use std::time::Duration;

pub(super) use nodetunnel_base::backoff::Backoff;

/// First reconnect delay after a failure.
pub(super) const INITIAL: Duration = Duration::from_millis(100);
/// The delay stops doubling here (istiod restarts and rollouts are over within this).
pub(super) const MAX: Duration = Duration::from_secs(15);
