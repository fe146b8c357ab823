//! The host CNI config directory as the container runtime sees it: which file is the primary
//! config, reading one as JSON, and replacing a file atomically so the runtime never reads a
//! half-written config.
//!
//! Facts used: kubelet's dockershim, containerd (go-cni `loadFromConfDir`) and CRI-O list
//! `.conf`, `.conflist` and `.json` files, sort them by name and use the first one that loads;
//! `.conflist` is read as a list, the other two as a single config. Istio's installer looks at
//! `.conf` and `.conflist` only; we also count `.json` because the runtime does, and inserting
//! into a file the runtime ignores would leave pods uncaptured. An explicit `CNI_CONF_NAME`
//! wins over the scan, and (as in Istio) `X.conf` missing but `X.conflist` present, or the
//! reverse, means the other one.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;
use tracing::debug;

use super::conflist::{self, Shape};

// Suffix of our temporary files; not a config extension, so no runtime ever loads one.
use nodetunnel_base::files::TEMP_SUFFIX;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot list the CNI config directory {dir}: {source}")]
    ListDir { dir: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not JSON: {source}")]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// How a runtime reads a file with this name, or `None` when it does not load it at all.
pub(crate) fn shape_of(path: &Path) -> Option<Shape> {
    match path.extension().and_then(OsStr::to_str)? {
        "conflist" => Some(Shape::List),
        "conf" | "json" => Some(Shape::Single),
        _ => None,
    }
}

/// The primary CNI config in `dir`: the `explicit` file name when given (see the module doc
/// for the `.conf`/`.conflist` swap), otherwise the first file by name with a config extension
/// whose content the runtime would load. `Ok(None)` means there is none yet: the primary CNI
/// has not installed its config.
pub fn choose_primary(dir: &Path, explicit: Option<&str>) -> Result<Option<PathBuf>, FileError> {
    if let Some(name) = explicit.filter(|n| !n.is_empty()) {
        return Ok(explicit_path(dir, name));
    }
    for path in config_files(dir)? {
        let Some(shape) = shape_of(&path) else {
            continue;
        };
        match read_json(&path) {
            Ok(doc) if conflist::is_valid(&doc, shape) => return Ok(Some(path)),
            Ok(_) => {
                debug!(path = %path.display(), "skipping a CNI config the runtime would not load")
            }
            Err(e) => debug!(error = %e, "skipping an unreadable CNI config"),
        }
    }
    Ok(None)
}

fn explicit_path(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    let swapped = if let Some(stem) = name.strip_suffix(".conflist") {
        dir.join(format!("{stem}.conf"))
    } else if name.ends_with(".conf") {
        dir.join(format!("{name}list"))
    } else {
        return None;
    };
    swapped.is_file().then_some(swapped)
}

/// Every file in `dir` with a config extension, sorted by name (byte order, like Go's
/// `sort.Strings`). Directories and our own temporary files are left out.
pub(crate) fn config_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let list_err = |source| FileError::ListDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let path = entry.path();
        if shape_of(&path).is_none() || path.is_dir() {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Reads and parses one file.
pub(crate) fn read_json(path: &Path) -> Result<Value, FileError> {
    let bytes = fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::NotJson {
        path: path.to_owned(),
        source,
    })
}

/// Pretty JSON with a trailing newline, as Istio writes CNI configs.
pub(crate) fn to_pretty(doc: &Value) -> Vec<u8> {
    // Serializing a `Value` into memory cannot fail (all keys are strings).
    let mut out = serde_json::to_vec_pretty(doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The permission bits of `path`, if it exists.
pub fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Replaces `path` with `contents` ([`nodetunnel_base::files::replace`]: an exclusive,
/// unpredictably named temporary file renamed over it, so no symlink is ever followed). A
/// reader sees either the old or the new file, never a mix, and a crash leaves at worst a
/// stray temporary file.
pub(crate) fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    nodetunnel_base::files::replace(path, contents, mode).map_err(|source| FileError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Removes `path`; a file already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FileError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether a path is one of our temporary files (events about them are not worth a re-check).
pub(crate) fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.ends_with(TEMP_SUFFIX))
}

/// Where a single config at `path` goes once wrapped into a list: Istio appends `list` to a
/// `.conf` name; a `.json` name gets its extension replaced. The new name normally sorts right
/// after the old one, so it stays the primary; if another file slips in between, the next
/// check simply follows whichever file is first.
pub(crate) fn list_path_for(path: &Path) -> PathBuf {
    match path.extension().and_then(OsStr::to_str) {
        Some("conflist") => path.to_owned(),
        Some("conf") => {
            let mut s = path.as_os_str().to_owned();
            s.push("list");
            PathBuf::from(s)
        }
        _ => path.with_extension("conflist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths() {
        assert_eq!(
            list_path_for(Path::new("/d/10-a.conf")),
            Path::new("/d/10-a.conflist")
        );
        assert_eq!(
            list_path_for(Path::new("/d/10-a.json")),
            Path::new("/d/10-a.conflist")
        );
        assert_eq!(
            list_path_for(Path::new("/d/10-a.conflist")),
            Path::new("/d/10-a.conflist")
        );
    }

    #[test]
    fn shapes() {
        assert_eq!(shape_of(Path::new("a.conflist")), Some(Shape::List));
        assert_eq!(shape_of(Path::new("a.conf")), Some(Shape::Single));
        assert_eq!(shape_of(Path::new("a.json")), Some(Shape::Single));
        assert_eq!(shape_of(Path::new("a.conf.nodetunnel-tmp")), None);
        assert_eq!(shape_of(Path::new("kubeconfig")), None);
    }

    #[test]
    fn temp_files_are_recognised() {
        let t = nodetunnel_base::files::temp_path(Path::new("/d/10-a.conflist"));
        assert!(is_temp(&t));
        assert!(shape_of(&t).is_none());
        assert!(!is_temp(Path::new("/d/10-a.conflist")));
    }
}
