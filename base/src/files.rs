//! Replacing a file so that nothing else can be made to write through it.
//!
//! The agent writes CNI configs and its kubeconfig into host directories other containers may
//! mount, and the CA tools write private keys. A plain `open(O_CREAT|O_TRUNC)` follows a
//! symlink someone planted at the path (or at a predictable temporary name) and writes, as
//! root, wherever it points. [`replace`] never opens an existing path: it creates a new
//! temporary file with an unpredictable name exclusively (`O_EXCL`, which does not follow
//! symlinks, plus `O_NOFOLLOW`), gives it the exact mode, syncs it, and renames it over the
//! path — `rename` replaces a symlink at the path itself, never its target. A reader sees the
//! old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The suffix of [`replace`]'s temporary files, so watchers can ignore them (and only them).
pub const TEMP_SUFFIX: &str = ".nodetunnel-tmp";

/// Writes `contents` to `path` with exactly `mode`, replacing whatever was there (a symlink
/// included, as a link) without following it; then syncs the directory.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = temp_path(path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(contents)?;
        // The mode given at creation is filtered by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// `.<name>.<pid>.<random><TEMP_SUFFIX>` beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(
        ".{name}.{}.{:016x}{TEMP_SUFFIX}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

#[cfg(test)]
mod tests;
