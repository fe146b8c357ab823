//! A listener set in a fresh network namespace (root): what it binds, what a failed bind says,
//! and that stopping or dropping it really frees the ports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::identity::CertificateSource;
use crate::identity::{LocalCa, SecretManager};
use crate::metrics::Metrics;
use crate::proxy::{Delivery, Scope};
use crate::state::StateHandle;
use nodetunnel_base::netns::NetnsHandle;

/// A fresh, empty network namespace, or `None` (a skip) without root outside CI.
fn fresh_netns(test: &str) -> Option<Arc<NetnsHandle>> {
    if !nix::unistd::geteuid().is_root() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "{test}: needs root; CI=true, so this is a failure, not a skip"
        );
        eprintln!("{test}: skipped: needs root");
        return None;
    }
    let netns = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        NetnsHandle::current().unwrap()
    })
    .join()
    .unwrap();
    Some(Arc::new(netns))
}

/// Inputs for a scope whose listeners and upstream sockets live in `sockets`' namespace.
fn inputs(sockets: &SocketFactory) -> Arc<ProxyInputs> {
    let vars: HashMap<String, String> = [("LOCAL_XDS_PATH", "/unused.yaml"), ("FAKE_CA", "true")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Arc::new(Config::from_vars(&vars).unwrap());
    let ca = LocalCa::generate(&config.trust_domain).unwrap();
    Arc::new(ProxyInputs::new(
        config.clone(),
        StateHandle::default(),
        SecretManager::new(CertificateSource::Local(Arc::new(ca)), config.ca.secret_ttl),
        sockets.clone(),
        Arc::new(Metrics::new()),
        Scope::default(),
        Delivery::PreserveClient,
    ))
}

/// Starts a set in `sockets`' namespace, retrying until `deadline` while a port is taken.
async fn start_within(
    sockets: &SocketFactory,
    deadline: Duration,
) -> Result<ListenerSet, ListenError> {
    let until = Instant::now() + deadline;
    loop {
        match ListenerSet::start(inputs(sockets), sockets).await {
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            result => return result,
        }
    }
}

#[tokio::test]
async fn binds_three_ports_and_frees_them_when_stopped_or_dropped() {
    let Some(netns) = fresh_netns("binds_three_ports_and_frees_them_when_stopped_or_dropped")
    else {
        return;
    };
    // Without SO_REUSEPORT a second bind of a held port fails, which is how the test sees
    // whether a set still holds its ports.
    let sockets = SocketFactory::in_netns(netns, None).with_port_reuse(false);
    let mut first = ListenerSet::start(inputs(&sockets), &sockets)
        .await
        .unwrap();

    let err = match ListenerSet::start(inputs(&sockets), &sockets).await {
        Ok(_) => panic!("a second set bound the ports the first holds"),
        Err(e) => e,
    };
    assert_eq!(err.listener, Listener::Outbound);
    assert_eq!(err.addr.port(), 15001);
    assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on {} (outbound capture): {}",
            err.addr, err.source
        )
    );

    // Stopped: the ports are free as soon as stop_listening returns (no retry).
    first.stop_listening().await;
    let second = ListenerSet::start(inputs(&sockets), &sockets)
        .await
        .expect("ports still held after stop_listening returned");
    assert_eq!(second.inputs().tasks.len(), 0);

    // Dropped without stopping: the accept loops are aborted, so the ports free up too.
    drop(second);
    let third = start_within(&sockets, Duration::from_secs(5))
        .await
        .expect("ports still held after the set was dropped");
    let outcome = third.drain(Duration::from_secs(1)).await;
    assert_eq!(outcome.cut, 0);
    drop(first);
}

#[test]
fn each_listener_names_its_contract_port() {
    assert_eq!(Listener::Outbound.port(), OUTBOUND_PORT);
    assert_eq!(Listener::InboundPlaintext.port(), INBOUND_PLAINTEXT_PORT);
    assert_eq!(Listener::InboundHbone.port(), HBONE_PORT);
    assert_eq!(Listener::InboundPlaintext.to_string(), "inbound plaintext");
    assert_eq!(Listener::InboundHbone.to_string(), "inbound HBONE");
}
