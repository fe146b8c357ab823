//! The one place that decides whether this machine can run namespaced tests.

use std::sync::OnceLock;

use crate::cmd;
use crate::netns::{unique_prefix, Netns};

/// Whether namespaced tests can run here: root, and `ip netns add` works.
///
/// - Yes → `true`.
/// - No, and `CI=true` → panics with the reason: CI must never skip these tests silently.
/// - No, elsewhere (a developer without root) → prints `skipped: needs root (...)` and returns
///   `false`; the test should return early.
pub fn namespaces_available(test: &str) -> bool {
    match probe() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{test}: needs root and working `ip netns add` ({reason}); CI=true, so this \
                     is a failure, not a skip"
                );
            }
            eprintln!("{test}: skipped: needs root ({reason})");
            false
        }
    }
}

/// Like [`namespaces_available`] but for binaries (demo, bench): an error message or `Ok`.
pub fn require_namespaces() -> Result<(), String> {
    probe().map_err(|reason| format!("needs root and working `ip netns add`: {reason}"))
}

fn probe() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            if !nix::unistd::geteuid().is_root() {
                return Err("not running as root".to_string());
            }
            for tool in ["ip", "iptables", "ss"] {
                if cmd::output(tool, &["-V"]).is_err() {
                    return Err(format!("`{tool}` is not installed"));
                }
            }
            let name = format!("{}-probe", unique_prefix());
            Netns::create(&name).map(drop).map_err(|e| e.to_string())
        })
        .clone()
}
