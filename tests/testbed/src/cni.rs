//! (filled in by the CNI issue)
