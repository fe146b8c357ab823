//! (filled in by the CNI issue)

pub mod config;

/// Runs the plugin with the process's environment and stdin; returns the exit code.
pub fn main() -> i32 {
    1
}
