//! The manager against a real agent end: a ZDS server on a Unix SOCK_SEQPACKET socket in a temp
//! dir, the manager's real loop connected to it, real descriptors.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nodetunnel_zds::server::ZdsServer;
use tokio::sync::watch;

use super::*;
use crate::config::{Config, Mode};
use crate::identity::{CertificateSource, LocalCa, SecretManager};
use crate::metrics::Metrics;
use crate::state::StateHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A shared-mode pod context whose agent socket is `uds`.
fn context(uds: &Path) -> PodContext {
    let vars: HashMap<String, String> = [
        ("LOCAL_XDS_PATH", "/unused.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_MODE", "shared"),
        ("INPOD_UDS", &uds.to_string_lossy()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Arc::new(Config::from_vars(&vars).unwrap());
    let Mode::Shared(inpod) = config.mode.clone() else {
        panic!("not shared mode: {:?}", config.mode);
    };
    let ca = LocalCa::generate(&config.trust_domain).unwrap();
    PodContext {
        certs: SecretManager::new(CertificateSource::Local(Arc::new(ca)), config.ca.secret_ttl),
        config,
        state: StateHandle::default(),
        metrics: Arc::new(Metrics::new()),
        inpod,
    }
}

/// An AddWorkload without `workload_info` gets an error ack naming the field, and no pod
/// proxy is started for it (with the check off, the manager would start one, bound in this
/// process's namespace, and ack success or a bind error instead). The session goes on: the
/// snapshot completes and the manager is ready with no pods.
#[tokio::test]
async fn an_add_without_workload_info_is_refused_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("zds.sock");
    let server = ZdsServer::bind(&uds).unwrap();
    let (ready_tx, mut ready) = watch::channel(false);
    let table = PodTable::default();
    let manager = InpodManager::new(context(&uds), ready_tx, table.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(manager.run(async {
        let _ = stopped.await;
    }));

    let mut peer = tokio::time::timeout(WAIT, server.accept())
        .await
        .expect("the manager did not connect in time")
        .unwrap();
    let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
    let ack = tokio::time::timeout(WAIT, peer.add("uid-anon", None, netns.as_fd()))
        .await
        .expect("no ack in time")
        .unwrap();
    let error = ack
        .error
        .expect("an add without workload info was acked as success");
    assert_eq!(error, format!("add uid-anon: {MISSING_WORKLOAD_INFO}"));
    assert!(table.lock().unwrap().is_empty(), "a pod proxy was started");

    assert!(peer.snapshot_sent().await.unwrap().is_ok());
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("not ready after the snapshot")
        .unwrap();
    assert!(table.lock().unwrap().is_empty());

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
}
