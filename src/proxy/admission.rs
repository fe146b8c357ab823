//! The caps on inbound HBONE connections (15008): `nodetunnel_base::admission`'s, made once per
//! process and shared by every listener group — in shared mode all pods' sockets are this
//! process's descriptors, so the caps protect the whole node.

use std::sync::{Arc, OnceLock};

pub use nodetunnel_base::admission::ConnectionLimits;
use nodetunnel_base::admission::Names;

/// What the log lines call 15008 and its settings.
const NAMES: Names = Names {
    listener: "inbound HBONE",
    total_setting: "HBONE_MAX_CONNECTIONS",
    per_source_setting: "HBONE_MAX_CONNECTIONS_PER_IP",
};

/// The process's limits: made with the first caller's values (the daemon has one
/// configuration), shared by every listener group after.
pub fn shared(max_total: usize, max_per_source: usize) -> Arc<ConnectionLimits> {
    static SHARED: OnceLock<Arc<ConnectionLimits>> = OnceLock::new();
    SHARED
        .get_or_init(|| ConnectionLimits::new(NAMES, max_total, max_per_source))
        .clone()
}
