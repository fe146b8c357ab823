//! Real sockets, and a real second user: the client half of the two cross-user tests is this
//! test binary re-run as `nobody` (std's `CommandExt::uid`), so no thread of the test process
//! ever changes its credentials.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::*;

const NOBODY: u32 = 65534;
/// Set in the child: the socket to connect to.
const CLIENT_ENV: &str = "NODETUNNEL_LOCAL_SOCKET_TEST_CONNECT";

/// In the re-run child: connect to the socket named by [`CLIENT_ENV`] and exit 0 if the
/// connect succeeded, 13 on EACCES, 1 otherwise. Returns false in the parent.
fn act_as_client() -> bool {
    let Ok(path) = std::env::var(CLIENT_ENV) else {
        return false;
    };
    let code = match UnixStream::connect(&path) {
        Ok(s) => {
            // Hold the connection until the server has looked at it.
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut &s, &mut buf);
            0
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => 13,
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Re-runs `test` of this binary as `nobody`, connecting to `path`. The binary is run from a
/// copy in a world-readable directory: the build tree may sit under a home directory
/// `nobody` cannot enter.
fn connect_as_nobody(dir: &Path, test: &str, path: &Path) -> std::process::Child {
    let exe = dir.join("test-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).expect("copying the test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A process another test thread forks while the copy is open for writing holds that
    // descriptor until it execs, and exec of a file open for writing fails with ETXTBSY:
    // retry briefly.
    for _ in 0..50 {
        match Command::new(&exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CLIENT_ENV, path)
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
        {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("re-running the test binary as nobody: {e}"),
        }
    }
    panic!("{} stayed busy (ETXTBSY)", exe.display());
}

/// A listener in a directory others may traverse, so only the socket's own mode decides.
fn listener(mode: Option<u32>) -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("s.sock");
    let l = UnixListener::bind(&path).unwrap();
    restrict_to_owner(&path).unwrap();
    if let Some(mode) = mode {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    (dir, path, l)
}

/// Whether the cross-user tests can run: they need root to start a process as `nobody`.
/// Under `CI=true` not being root is a failure, not a skip.
fn running_as_root() -> bool {
    let root = geteuid().is_root();
    if !root && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: the cross-user socket tests need root");
    }
    if !root {
        eprintln!("skipped: needs root (to start a client as nobody)");
    }
    root
}

#[test]
fn the_policy_allows_root_and_the_configured_user_only() {
    let p = PeerPolicy::root_or(1000);
    assert!(p.allows(0));
    assert!(p.allows(1000));
    assert!(!p.allows(1001));
    assert!(!p.allows(NOBODY));
    assert!(PeerPolicy::this_user().allows(geteuid().as_raw()));
}

#[test]
fn a_connection_from_this_user_passes_the_check_with_its_credentials() {
    let (_dir, path, l) = listener(None);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, OWNER_ONLY);
    let _client = UnixStream::connect(&path).unwrap();
    let (server, _) = l.accept().unwrap();
    let peer = PeerPolicy::this_user()
        .check(&server)
        .expect("own user allowed");
    assert_eq!(peer.uid, geteuid().as_raw());
    assert_eq!(peer.pid, std::process::id() as i32);
}

/// Another user cannot even connect to the owner-only socket file.
#[test]
fn another_user_cannot_connect_to_an_owner_only_socket() {
    if act_as_client() || !running_as_root() {
        return; // the child half, or a machine where we cannot become nobody
    }
    let (dir, path, _l) = listener(None);
    let status = connect_as_nobody(
        dir.path(),
        "local_socket::tests::another_user_cannot_connect_to_an_owner_only_socket",
        &path,
    )
    .wait()
    .unwrap();
    assert_eq!(
        status.code(),
        Some(13),
        "nobody's connect was not refused with EACCES"
    );
}

/// With the file mode opened up (say, a chmod by mistake), the credentials check still refuses
/// another user, naming its uid.
#[test]
fn the_peer_check_refuses_another_user_even_when_the_file_mode_lets_it_connect() {
    if act_as_client() || !running_as_root() {
        return;
    }
    let (dir, path, l) = listener(Some(0o666));
    let mut child = connect_as_nobody(
        dir.path(),
        "local_socket::tests::the_peer_check_refuses_another_user_even_when_the_file_mode_lets_it_connect",
        &path,
    );
    let (server, _) = l.accept().unwrap();
    let err = PeerPolicy::this_user()
        .check(&server)
        .expect_err("nobody must be refused");
    assert!(
        matches!(err, PeerRejected::NotAllowed { uid: NOBODY, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("uid 65534"), "{err}");
    drop(server);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
