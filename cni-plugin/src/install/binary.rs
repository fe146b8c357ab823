//! The plugin binary in the host CNI bin dir, where the runtime looks up a chain entry's
//! `type`. Copied from the agent image atomically (a runtime may exec it at any moment, and a
//! half-copied binary would fail every pod), and only when it differs, so a restart of the
//! agent does not churn the host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::files::{self, FileError};

/// Mode of the installed binary.
pub(crate) const BINARY_MODE: u32 = 0o755;

#[derive(Debug, Error)]
pub enum BinaryError {
    #[error("cannot read the plugin binary {path} to install: {source}")]
    ReadSource { path: PathBuf, source: io::Error },
    #[error(transparent)]
    File(#[from] FileError),
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOutcome {
    /// The target already had the same bytes and mode.
    Unchanged,
    /// The target was missing or different and has been replaced.
    Copied,
}

/// Makes `target` a copy of `source` with mode 0755.
pub fn ensure(source: &Path, target: &Path) -> Result<BinaryOutcome, BinaryError> {
    let wanted = fs::read(source).map_err(|source_err| BinaryError::ReadSource {
        path: source.to_owned(),
        source: source_err,
    })?;
    if is_same(target, &wanted) {
        return Ok(BinaryOutcome::Unchanged);
    }
    files::atomic_write(target, &wanted, BINARY_MODE)?;
    Ok(BinaryOutcome::Copied)
}

fn is_same(target: &Path, wanted: &[u8]) -> bool {
    let Ok(meta) = fs::metadata(target) else {
        return false;
    };
    if meta.len() != wanted.len() as u64 || files::mode_of(target) != Some(BINARY_MODE) {
        return false;
    }
    fs::read(target).is_ok_and(|have| have == wanted)
}

/// Removes the installed binary; a missing one is fine.
pub fn remove(target: &Path) -> Result<bool, BinaryError> {
    Ok(files::remove_if_present(target)?)
}
