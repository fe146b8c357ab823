//! These run before workload conversion exists in every branch, so the meshes here hold no
//! workloads; what is checked is when a new generation is (and is not) published.

use std::time::{Duration, Instant};

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

async fn wait_for(watcher: &MeshWatcher, what: &str, done: impl Fn(&MeshWatcher) -> bool) {
    let start = Instant::now();
    while !done(watcher) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; status: {:?}",
            watcher.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn start_fails_with_the_loader_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "workloads:\n  - uid: [\n").unwrap();
    let err = MeshWatcher::start(path.clone(), Defaults::default())
        .await
        .err()
        .expect("a broken file must not start");
    let text = err.to_string();
    assert!(text.contains("mesh.yaml:"), "{text}");
    let missing = dir.path().join("missing.yaml");
    let err = MeshWatcher::start(missing, Defaults::default())
        .await
        .err()
        .expect("a missing file must not start");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[tokio::test]
async fn bad_edit_keeps_the_last_good_mesh_and_a_fix_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "workloads: []\n").unwrap();
    let watcher = MeshWatcher::start(path.clone(), Defaults::default())
        .await
        .unwrap();
    assert_eq!(watcher.current().generation, 1);

    std::fs::write(&path, "workloads: []\nbogus: [\n").unwrap();
    wait_for(&watcher, "the load error", |w| {
        w.status().last_error.is_some()
    })
    .await;
    let status = watcher.status();
    let error = status.last_error.unwrap();
    assert!(
        error.contains("mesh.yaml:"),
        "error names the file: {error}"
    );
    assert_eq!(status.failed_loads, 1);
    assert_eq!(watcher.current().generation, 1, "last good mesh kept");

    std::fs::write(&path, "services: []\n").unwrap();
    wait_for(&watcher, "generation 2", |w| w.current().generation == 2).await;
    assert_eq!(watcher.status().last_error, None);
}

#[tokio::test]
async fn rename_over_and_symlink_swap_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes ConfigMap layout: mesh.yaml -> ..data/mesh.yaml, ..data -> ..<timestamp>.
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("mesh.yaml"), "workloads: []\n").unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("mesh.yaml");
    std::os::unix::fs::symlink("..data/mesh.yaml", &path).unwrap();
    let watcher = MeshWatcher::start(path.clone(), Defaults::default())
        .await
        .unwrap();

    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("mesh.yaml"), "services: []\n").unwrap();
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    wait_for(&watcher, "the ConfigMap swap", |w| {
        w.current().generation == 2
    })
    .await;

    // An editor's save: write a temporary file, rename it over the target.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "policies: []\n").unwrap();
    wait_for(&watcher, "the rewrite", |w| w.current().generation == 3).await;
    let tmp = dir.path().join(".mesh.yaml.swp");
    std::fs::write(&tmp, "workloads: []\nservices: []\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_for(&watcher, "the rename-over", |w| w.current().generation == 4).await;
}

#[tokio::test]
async fn unchanged_bytes_publish_nothing_and_deletion_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "workloads: []\n").unwrap();
    let watcher = MeshWatcher::start(path.clone(), Defaults::default())
        .await
        .unwrap();
    // Touching the file (same bytes) and changing a sibling trigger reloads that publish nothing;
    // a marker edit afterwards proves those reloads already ran.
    std::fs::write(&path, "workloads: []\n").unwrap();
    std::fs::write(dir.path().join("other"), "x").unwrap();
    tokio::time::sleep(DEBOUNCE * 3).await;
    std::fs::remove_file(&path).unwrap();
    wait_for(&watcher, "the deletion", |w| {
        w.status().last_error.is_some()
    })
    .await;
    assert_eq!(watcher.current().generation, 1);
    std::fs::write(dir.path().join("other"), "y").unwrap();
    tokio::time::sleep(DEBOUNCE * 3).await;
    assert_eq!(watcher.status().failed_loads, 1, "reported once");
    std::fs::write(&path, "workloads: []\n").unwrap();
    wait_for(&watcher, "the file's return", |w| {
        w.current().generation == 2
    })
    .await;
}
