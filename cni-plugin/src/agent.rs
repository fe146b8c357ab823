//! (filled in by the CNI issue)

/// Runs the node agent; returns the exit code.
pub fn main() -> i32 {
    1
}
