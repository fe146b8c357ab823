//! The CNI spec versions the plugin speaks, and what differs between them for a chained
//! plugin: only the result format (see [`super::result`]) and which verbs exist.
//!
//! 0.1.0/0.2.0 results (`ip4`/`ip6` objects) are not supported: no runtime that Kubernetes
//! supports still sends them. 1.1.0 adds `STATUS` and `GC` and optional result fields; its
//! result format is otherwise 1.0.0's (the CNI library decodes both with one type).

use serde_json::json;

/// Every version `VERSION` reports, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The `cniVersion` of the `VERSION` answer itself (its format is the same in 1.0 and 1.1).
pub const VERSION_OUTPUT: &str = "1.0.0";

/// The result formats, by version family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 0.3.0, 0.3.1, 0.4.0: `ips[].version` ("4"/"6") is required.
    V03,
    /// 1.0.0: `ips[].version` removed.
    V10,
    /// 1.1.0: like 1.0.0, plus optional `mtu`/`socketPath`/`pciID` on interfaces and
    /// `mtu`/`advmss`/`priority`/`table`/`scope` on routes.
    V11,
}

impl Format {
    pub fn of(version: &str) -> Option<Format> {
        match version {
            "0.3.0" | "0.3.1" | "0.4.0" => Some(Format::V03),
            "1.0.0" => Some(Format::V10),
            "1.1.0" => Some(Format::V11),
            _ => None,
        }
    }
}

pub fn is_supported(version: &str) -> bool {
    Format::of(version).is_some()
}

/// Whether `version` has the 1.1.0 verbs (`STATUS`, `GC`).
pub fn has_status_and_gc(version: &str) -> bool {
    Format::of(version) == Some(Format::V11)
}

/// The `VERSION` answer.
pub fn version_info() -> serde_json::Value {
    json!({"cniVersion": VERSION_OUTPUT, "supportedVersions": SUPPORTED})
}
