//! SKELETON (helper-control): the YAML mesh as versioned xDS resources, and diffs between two.
