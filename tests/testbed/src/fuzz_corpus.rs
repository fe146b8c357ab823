//! The fuzz corpora kept in the repository (`fuzz/corpus/<target>/`), for the tests that
//! replay them in `cargo test` so an input the fuzzer once found stays a test forever.

use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` at the workspace root.
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus, sorted by path; panics when the directory is unreadable
/// or empty, so a lost corpus cannot pass as a replay of nothing.
pub fn files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} unreadable: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("corpus file {} unreadable: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
}
