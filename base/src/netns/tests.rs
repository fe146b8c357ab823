use std::io;
use std::path::Path;
use std::sync::Arc;

use nix::sched::CloneFlags;

use super::{NetnsError, NetnsHandle, NetnsId};

#[test]
fn current_namespace_equals_itself_and_runs_code() {
    let a = NetnsHandle::current().unwrap();
    let b = NetnsHandle::open(Path::new("/proc/self/ns/net")).unwrap();
    assert_eq!(a, b);
    // Entering our own namespace works without privileges beyond what setns needs; when
    // unprivileged, setns fails with EPERM, which is reported as an error, not a panic.
    match a.run(|| 41 + 1) {
        Ok(v) => assert_eq!(v, 42),
        Err(e) => assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied),
    }
}

#[test]
fn own_netns_opens_and_matches_current_id() {
    let ns = NetnsHandle::open(Path::new("/proc/self/ns/net")).expect("open own netns");
    assert_eq!(ns.id(), NetnsId::of_process().unwrap());
    let clone = ns.try_clone().unwrap();
    assert_eq!(clone.id(), ns.id());
}

#[test]
fn other_namespace_kinds_and_files_are_refused() {
    for path in ["/proc/self/ns/mnt", "/proc/self/status"] {
        match NetnsHandle::open(Path::new(path)) {
            Err(NetnsError::NotANetns { path: p, found }) => {
                assert_eq!(p, Path::new(path));
                assert!(!found.starts_with("net:["), "{found}");
            }
            other => panic!("{path}: expected NotANetns, got {other:?}"),
        }
    }
}

#[test]
fn missing_path_is_an_open_error_naming_it() {
    let err = NetnsHandle::open(Path::new("/nonexistent/ntt-netns")).unwrap_err();
    assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ntt-netns"), "{err}");
}

#[test]
fn id_displays_as_dev_colon_inode() {
    assert_eq!(NetnsId::new(4, 4026531840).to_string(), "4:4026531840");
}

/// The namespace a `netns` worker is in while it runs a job.
fn namespace_of_worker(ns: &Arc<NetnsHandle>) -> Result<NetnsId, NetnsError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(ns.run_async(|| NetnsHandle::current().map(|n| n.id())))?
}

#[test]
fn shared_workers_enter_each_namespace_and_go_home() {
    let home = Arc::new(NetnsHandle::current().unwrap());
    // Our own namespace is always enterable when we are root; unprivileged setns fails.
    let Ok(seen) = namespace_of_worker(&home) else {
        return;
    };
    assert_eq!(seen, home.id());
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    // A fresh namespace (unshare on a scratch thread, handle kept via /proc).
    let other = std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
        Arc::new(NetnsHandle::current().unwrap())
    })
    .join()
    .unwrap();
    assert_ne!(other.id(), home.id());
    for _ in 0..20 {
        assert_eq!(namespace_of_worker(&other).unwrap(), other.id());
        assert_eq!(namespace_of_worker(&home).unwrap(), home.id());
    }
    // Idle workers go back home (right after answering), so they never keep a deleted
    // pod's namespace alive.
    let all_home = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| t.ok())
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .map(|c| c.starts_with("netns-"))
                    .unwrap_or(false)
            })
            .all(|t| {
                NetnsHandle::open(&t.path().join("ns/net"))
                    .map(|n| n.id())
                    .ok()
                    == Some(home.id())
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !all_home() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(all_home(), "a netns worker stayed inside a pod namespace");
}

#[test]
fn a_namespace_that_cannot_be_entered_is_an_error_not_a_hang() {
    // A regular file is not a namespace: setns fails with EINVAL. `from_fd` refuses it, so
    // the handle is built by hand to reach the worker's own error path.
    let file = tempfile::tempfile().unwrap();
    let id = NetnsId::of_fd(&file).unwrap();
    let bogus = Arc::new(NetnsHandle {
        fd: file.into(),
        path: "a temp file".into(),
        id,
    });
    let err = namespace_of_worker(&bogus).unwrap_err();
    assert!(
        matches!(
            err,
            NetnsError::Enter {
                source: nix::Error::EINVAL,
                ..
            }
        ),
        "{err}"
    );
}

/// `run_here` runs inside the namespace on the calling thread and returns the thread home;
/// a socket made inside belongs to that namespace (its loopback is another one).
#[test]
fn run_here_enters_on_this_thread_and_comes_back() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "run_here test needs root; CI=true, so this is a failure, not a skip"
        );
        return;
    }
    let home = NetnsHandle::current().unwrap();
    let other = std::thread::spawn(|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
        NetnsHandle::current().unwrap()
    })
    .join()
    .unwrap();
    // A port taken at home is free inside another namespace: a socket bound there proves it
    // was made inside.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for _ in 0..3 {
        let (inside, listener) = other
            .run_here(|| {
                let id = NetnsHandle::current().unwrap().id();
                (id, std::net::TcpListener::bind(("127.0.0.1", port)))
            })
            .unwrap();
        assert_eq!(inside, other.id());
        assert_eq!(
            NetnsHandle::current().unwrap().id(),
            home.id(),
            "left inside"
        );
        assert!(
            listener.is_ok(),
            "port {port} taken inside too: {listener:?}"
        );
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    }
    // Home itself: nothing to enter.
    assert_eq!(home.run_here(|| 7).unwrap(), 7);
    // A file that is not a namespace: setns fails, the thread never moved.
    let file = tempfile::tempfile().unwrap();
    let id = NetnsId::of_fd(&file).unwrap();
    let bogus = NetnsHandle {
        fd: file.into(),
        path: "a temp file".into(),
        id,
    };
    assert!(matches!(
        bogus.run_here(|| ()),
        Err(NetnsError::Enter {
            source: nix::Error::EINVAL,
            ..
        })
    ));
    assert_eq!(NetnsHandle::current().unwrap().id(), home.id());
}
