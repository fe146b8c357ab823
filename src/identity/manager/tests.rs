//! Caching, coalescing, renewal and backoff, against an in-process CA with test hooks.

use super::*;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// Test-only knobs: a CA that is slow (to widen races) or failing (to exercise backoff).
#[derive(Default)]
pub(super) struct Hooks {
    pub(super) fail: std::sync::atomic::AtomicBool,
    pub(super) delay_ms: AtomicU64,
}

impl Hooks {
    pub(super) async fn before_sign(&self, id: &Identity) -> Result<(), ManagerError> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(ManagerError::InvalidCertificate {
                identity: id.to_string(),
                reason: "injected test failure".into(),
            });
        }
        Ok(())
    }
}

fn manager(ttl: Duration) -> Arc<SecretManager> {
    let ca = LocalCa::generate("cluster.local").unwrap();
    SecretManager::new(CertificateSource::Local(Arc::new(ca)), ttl)
}

fn leaf_uris(cert: &WorkloadCert) -> Vec<String> {
    let (_, leaf) = X509Certificate::from_der(cert.leaf()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

async fn sleep_until(t: SystemTime) {
    if let Ok(wait) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_coalesce_into_one_issuance() {
    let m = manager(Duration::from_secs(3600));
    // A slow CA and a common start make all 20 fetches overlap the one issuance.
    m.hooks.delay_ms.store(100, Ordering::SeqCst);
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (m, start) = (m.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                m.fetch(&id("a")).await.unwrap()
            })
        })
        .collect();
    let mut certs = Vec::new();
    for t in tasks {
        certs.push(t.await.unwrap());
    }
    assert_eq!(m.issuance_count(), 1);
    assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
}

#[tokio::test]
async fn identities_do_not_wait_for_each_other() {
    let m = manager(Duration::from_secs(3600));
    m.hooks.delay_ms.store(1000, Ordering::SeqCst);
    let slow = tokio::spawn({
        let m = m.clone();
        async move { m.fetch(&id("slow")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.hooks.delay_ms.store(0, Ordering::SeqCst);
    let started = std::time::Instant::now();
    m.fetch(&id("fast")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(!slow.is_finished());
    slow.await.unwrap();
}

/// Past the refresh point, fetches don't queue behind a slow renewal while the old
/// certificate is still valid.
#[tokio::test]
async fn renewal_in_flight_serves_the_old_cert() {
    let m = manager(Duration::from_secs(4));
    let first = m.fetch(&id("a")).await.unwrap();
    sleep_until(first.refresh_at() + Duration::from_millis(50)).await;
    m.hooks.delay_ms.store(1000, Ordering::SeqCst);
    let renewing = tokio::spawn({
        let m = m.clone();
        async move { m.fetch(&id("a")).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    assert!(Arc::ptr_eq(&first, &m.fetch(&id("a")).await.unwrap()));
    assert!(started.elapsed() < Duration::from_millis(500));
    let renewed = renewing.await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert!(Arc::ptr_eq(&renewed, &m.fetch(&id("a")).await.unwrap()));
    assert_eq!(m.issuance_count(), 2);
}

#[tokio::test]
async fn cert_contents() {
    let m = manager(Duration::from_secs(3600));
    let cert = m.fetch(&id("a")).await.unwrap();
    assert_eq!(cert.identity, id("a"));
    assert_eq!(leaf_uris(&cert), vec![format!("URI({})", id("a"))]);
    assert_eq!(
        cert.chain.len(),
        1,
        "the root is not part of the presented chain"
    );
    assert_eq!(cert.roots.len(), 1);
    let now = SystemTime::now();
    assert!(cert.is_valid_at(now));
    assert!(cert.not_after > now + Duration::from_secs(3590));
    let refresh = cert.refresh_at().duration_since(now).unwrap();
    assert!(
        (Duration::from_secs(1790)..Duration::from_secs(1801)).contains(&refresh),
        "{refresh:?}"
    );
    // The key is the one the leaf certifies.
    let key = KeyPair::try_from(&cert.key).unwrap();
    let (_, leaf) = X509Certificate::from_der(cert.leaf()).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[tokio::test]
async fn identities_get_their_own_certs() {
    let m = manager(Duration::from_secs(3600));
    let a = m.fetch(&id("a")).await.unwrap();
    let b = m.fetch(&id("b")).await.unwrap();
    assert_ne!(a.leaf(), b.leaf());
    assert_ne!(a.key.secret_der(), b.key.secret_der());
    assert_eq!(leaf_uris(&b), vec![format!("URI({})", id("b"))]);
    assert_eq!(m.cached_identities(), vec![id("a"), id("b")]);
    assert!(Arc::ptr_eq(&a, &m.fetch(&id("a")).await.unwrap()));
    assert_eq!(m.issuance_count(), 2);

    m.forget(&id("a"));
    assert_eq!(m.cached_identities(), vec![id("b")]);
    let a2 = m.fetch(&id("a")).await.unwrap();
    assert!(!Arc::ptr_eq(&a, &a2));
    assert_eq!(m.issuance_count(), 3);
}

#[tokio::test]
async fn renews_after_refresh_point() {
    let m = manager(Duration::from_secs(4));
    let first = m.fetch(&id("a")).await.unwrap();
    assert!(Arc::ptr_eq(&first, &m.fetch(&id("a")).await.unwrap()));
    assert_eq!(m.issuance_count(), 1);

    sleep_until(first.refresh_at() + Duration::from_millis(50)).await;
    let second = m.fetch(&id("a")).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(m.issuance_count(), 2);
    assert!(second.refresh_at() > SystemTime::now());
}

#[tokio::test]
async fn failed_renewal_keeps_valid_cert_then_retries() {
    let m = manager(Duration::from_secs(4));
    let first = m.fetch(&id("a")).await.unwrap();
    m.hooks.fail.store(true, Ordering::SeqCst);
    sleep_until(first.refresh_at() + Duration::from_millis(50)).await;

    assert!(Arc::ptr_eq(&first, &m.fetch(&id("a")).await.unwrap()));
    assert_eq!(m.issuance_count(), 2);
    // Within the backoff no new attempt is made.
    assert!(Arc::ptr_eq(&first, &m.fetch(&id("a")).await.unwrap()));
    assert_eq!(m.issuance_count(), 2);

    m.hooks.fail.store(false, Ordering::SeqCst);
    // The first retry waits MIN_BACKOFF ±50% (jittered).
    tokio::time::sleep(MIN_BACKOFF.mul_f64(1.5) + Duration::from_millis(50)).await;
    let renewed = m.fetch(&id("a")).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert_eq!(m.issuance_count(), 3);
}

#[tokio::test]
async fn never_hands_out_an_expired_cert() {
    let m = manager(Duration::from_secs(2));
    let first = m.fetch(&id("a")).await.unwrap();
    m.hooks.fail.store(true, Ordering::SeqCst);
    sleep_until(first.not_after + Duration::from_millis(50)).await;
    let err = m.fetch(&id("a")).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::InvalidCertificate { .. }),
        "{err}"
    );
    // A fetch during the backoff reports it without asking the CA again.
    let err = m.fetch(&id("a")).await.unwrap_err();
    assert!(matches!(err, ManagerError::Backoff { .. }), "{err}");
    assert!(err.to_string().contains("injected test failure"), "{err}");
    assert_eq!(m.issuance_count(), 2);
}

#[tokio::test]
async fn background_renewal_renews_without_fetches() {
    let m = manager(Duration::from_secs(4));
    let first = m.fetch(&id("a")).await.unwrap();
    let task = m.spawn_renewal();
    sleep_until(first.refresh_at() + Duration::from_millis(500)).await;
    assert_eq!(m.issuance_count(), 2);
    let current = m.fetch(&id("a")).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &current));
    assert_eq!(m.issuance_count(), 2, "the fetch found the renewed cert");
    task.abort();
}

/// Every root the source vouches for joins the bundle, and every identity's new certificate
/// carries the whole bundle (here: plug-in files listing a second root mid-rotation).
#[tokio::test]
async fn certificates_trust_every_root_the_source_returns() {
    let current = LocalCa::generate("cluster.local").unwrap();
    let next = LocalCa::generate("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    current.write(dir.path()).unwrap();
    let roots = dir.path().join(crate::identity::ca::ROOT_CERT_FILE);
    std::fs::write(&roots, current.root_pem() + &next.root_pem()).unwrap();
    let ca = LocalCa::load(dir.path()).unwrap();
    let m = SecretManager::new(
        CertificateSource::Local(Arc::new(ca)),
        Duration::from_secs(60),
    );
    for sa in ["a", "b"] {
        let cert = m.fetch(&id(sa)).await.unwrap();
        assert_eq!(cert.roots.len(), 2, "{sa}");
    }
}
