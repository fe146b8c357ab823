use std::os::unix::fs::{symlink, MetadataExt};

use super::*;

#[test]
fn replaces_contents_with_the_exact_mode_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    replace(&path, b"new", 0o600).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["key.pem"]);
}

/// A symlink planted at the path is replaced as a link: the file it pointed to is untouched.
#[test]
fn a_symlink_at_the_path_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let path = dir.path().join("10-mesh.conflist");
    symlink(&victim, &path).unwrap();
    replace(&path, b"{}", 0o644).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(fs::read(&path).unwrap(), b"{}");
}

#[test]
fn temporary_names_are_not_predictable() {
    let path = Path::new("/d/f");
    assert_ne!(temp_path(path), temp_path(path));
    let name = temp_path(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(".f.") && name.ends_with(TEMP_SUFFIX),
        "{name}"
    );
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/f");
    let err = replace(&path, b"x", 0o644).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}
