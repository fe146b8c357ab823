//! Short-lived workload certificates, one per identity, cached and renewed before they expire.
//!
//! The node tunnel holds certificates for every pod on its node. Each identity gets a fresh
//! key generated here (the private key never leaves the process); only a CSR goes to the CA.
//! A certificate is handed out until its refresh point (half its lifetime) and never after it
//! expires; a failed renewal keeps serving the still-valid old one while retrying with backoff.
//!
//! Certificates come from an in-process CA or from a remote one over gRPC (istiod or
//! `nodetunnel-control`). Every root a CA answers with joins a trust bundle shared by all
//! identities (see `bundle`), so a CA root rotation doesn't cut off peers still holding
//! certificates under the previous root.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use nodetunnel_base::backoff::Backoff;
use rcgen::{CertificateParams, CertificateSigningRequest, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::RootCertStore;
use tokio::sync::Notify;
use tokio::time::Instant;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{CaClient, CaClientError, CaError, Identity, LocalCa, TlsConfigs};

mod bundle;
use bundle::TrustBundle;

/// First retry delay after a failed issuance; doubles per failure up to [`MAX_BACKOFF`], each
/// delay spread over ±50% (never above the cap): when the CA goes away every tunnel of the
/// fleet fails at the same moment, and without jitter they would all come back in lock step.
/// A fetch inside the backoff answers at once with [`ManagerError::Backoff`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the background renewal sleeps when nothing is cached (it is woken on new entries).
const IDLE_RENEWAL_CHECK: Duration = Duration::from_secs(60);
/// Tolerated clock difference between us and the CA when checking `not_before`.
const CA_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("generating a key or CSR for {identity} failed: {source}")]
    Csr {
        identity: String,
        source: rcgen::Error,
    },
    /// Boxed to keep `ManagerError` small: callers wrap it in their own errors.
    #[error("the CA refused to sign for {identity}: {source}")]
    Ca {
        identity: String,
        source: Box<CaError>,
    },
    /// Boxed like `Ca`. The source's text names the CA's address and the cause (unreachable,
    /// credentials rejected, ...).
    #[error("cannot get a certificate for {identity}: {source}")]
    Remote {
        identity: String,
        source: Box<CaClientError>,
    },
    #[error("the CA returned an unusable certificate for {identity}: {reason}")]
    InvalidCertificate { identity: String, reason: String },
    #[error("no valid certificate for {identity}; last issuance failed ({last_error}), next try in {retry_in:?}")]
    Backoff {
        identity: String,
        last_error: String,
        retry_in: Duration,
    },
}

/// A certificate for one identity, with everything a TLS config needs.
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first, then intermediates; without the root (peers have it).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The manager's whole trust bundle when this certificate was issued: the root this
    /// certificate chains to plus any still-trusted earlier roots (during a root rotation).
    pub roots: Arc<RootCertStore>,
    /// The same roots as certificates, for showing them (`/config_dump`); a `RootCertStore`
    /// keeps only trust anchors.
    pub root_certs: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When we received it; `not_before` is back-dated for clock skew, so the refresh point is
    /// measured from here, or short lifetimes would be "half over" on arrival.
    issued_at: SystemTime,
    /// TLS configs presenting this certificate; a renewed certificate starts with none.
    tls_configs: TlsConfigs,
}

impl WorkloadCert {
    /// Halfway between issuance and expiry: from here on, fetches renew it.
    pub(crate) fn refresh_at(&self) -> SystemTime {
        let start = self.issued_at.max(self.not_before);
        let lifetime = self.not_after.duration_since(start).unwrap_or_default();
        start + lifetime / 2
    }

    /// Whether the certificate may still be presented at `now`.
    pub(crate) fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The rustls configs built from this certificate (see `tls::server_config`).
    pub(crate) fn tls_configs(&self) -> &TlsConfigs {
        &self.tls_configs
    }
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Where one identity's certificate stands (ztunnel's three states, which `istioctl
/// ztunnel-config certificates` shows).
#[derive(Debug)]
pub enum CertState {
    /// No certificate yet and no failure: the first issuance has not finished.
    Initializing,
    /// No certificate; the last issuance failed with this error.
    Unavailable(String),
    /// The cached certificate (possibly past its refresh point while a renewal runs).
    Available(Arc<WorkloadCert>),
}

/// Where certificates come from. Both take a CSR and return a chain leaf-first, root-last.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// An in-process CA (`FAKE_CA`, plug-in CA files).
    Local(Arc<LocalCa>),
    /// istiod's (or `nodetunnel-control`'s) `IstioCertificateService` over gRPC.
    Remote(Arc<CaClient>),
}

/// What a source returns: the chain as sent (leaf .. root) and the roots to trust.
struct Signed {
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl CertificateSource {
    async fn sign(
        &self,
        csr: &CertificateSigningRequest,
        id: &Identity,
        ttl: Duration,
    ) -> Result<Signed, ManagerError> {
        match self {
            CertificateSource::Local(ca) => {
                let chain = ca
                    .sign_csr(csr.der(), id, ttl)
                    .map_err(|source| ManagerError::Ca {
                        identity: id.to_string(),
                        source: Box::new(source),
                    })?;
                Ok(Signed {
                    chain,
                    roots: ca.root_certs(),
                })
            }
            CertificateSource::Remote(client) => {
                let pem = csr.pem().map_err(|source| ManagerError::Csr {
                    identity: id.to_string(),
                    source,
                })?;
                let chain =
                    client
                        .sign(&pem, id, ttl)
                        .await
                        .map_err(|source| ManagerError::Remote {
                            identity: id.to_string(),
                            source: Box::new(source),
                        })?;
                // Istio's CA ends the chain with the root it signed under; that root (and only
                // it) is what this leaf must verify against. Without it nothing can be checked.
                let root = match chain.as_slice() {
                    [_leaf, .., root] => root.clone(),
                    _ => {
                        return Err(ManagerError::InvalidCertificate {
                            identity: id.to_string(),
                            reason: format!(
                                "the CA at {} returned a single certificate; the chain must end with its root",
                                client.address()
                            ),
                        })
                    }
                };
                Ok(Signed {
                    chain,
                    roots: vec![root],
                })
            }
        }
    }
}

/// Per-identity state. `current` is read without waiting; `issuing` is held by whoever talks to
/// the CA, which is what coalesces concurrent fetches into one issuance.
#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<WorkloadCert>>>,
    issuing: tokio::sync::Mutex<Failures>,
}

/// The issuance failures of one identity since its last success.
struct Failures {
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Default for Failures {
    fn default() -> Failures {
        Failures {
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            retry_at: None,
            last_error: String::new(),
        }
    }
}

impl Slot {
    fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct SecretManager {
    source: CertificateSource,
    ttl: Duration,
    slots: Mutex<HashMap<Identity, Arc<Slot>>>,
    issuances: AtomicU64,
    /// Roots from recent CA answers, given to every new certificate.
    bundle: Mutex<TrustBundle>,
    /// Wakes the renewal task when an identity is added.
    changed: Arc<Notify>,
    #[cfg(test)]
    hooks: tests::Hooks,
}

impl std::fmt::Debug for SecretManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretManager")
            .field("source", &self.source)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretManager {
    pub fn new(source: CertificateSource, ttl: Duration) -> Arc<SecretManager> {
        Arc::new(SecretManager {
            source,
            ttl,
            slots: Mutex::default(),
            issuances: AtomicU64::new(0),
            bundle: Mutex::new(TrustBundle::new(ttl.saturating_mul(2))),
            changed: Arc::new(Notify::new()),
            #[cfg(test)]
            hooks: Default::default(),
        })
    }

    /// A certificate for `id`: the cached one until its refresh point, else a new one.
    ///
    /// Past the refresh point, if another task is already renewing and the old certificate is
    /// still valid, the old one is returned at once instead of waiting for the CA.
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<WorkloadCert>, ManagerError> {
        let slot = self.slot(id);
        let fresh = |cert: &Option<Arc<WorkloadCert>>| {
            cert.as_ref()
                .filter(|c| SystemTime::now() < c.refresh_at())
                .cloned()
        };
        let still_valid = |cert: &Option<Arc<WorkloadCert>>| {
            cert.as_ref()
                .filter(|c| c.is_valid_at(SystemTime::now()))
                .cloned()
        };
        let current = slot.current();
        if let Some(cert) = fresh(&current) {
            return Ok(cert);
        }
        let mut failures = match slot.issuing.try_lock() {
            Ok(guard) => guard,
            Err(_) => match still_valid(&current) {
                Some(cert) => return Ok(cert),
                None => slot.issuing.lock().await,
            },
        };
        // Someone may have renewed while we waited for the lock.
        let current = slot.current();
        if let Some(cert) = fresh(&current) {
            return Ok(cert);
        }
        if let Some(retry_at) = failures.retry_at.filter(|t| Instant::now() < *t) {
            return match still_valid(&current) {
                Some(cert) => Ok(cert),
                None => Err(ManagerError::Backoff {
                    identity: id.to_string(),
                    last_error: failures.last_error.clone(),
                    retry_in: retry_at - Instant::now(),
                }),
            };
        }
        match self.issue(id).await {
            Ok(cert) => {
                *failures = Failures::default();
                *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Some(cert.clone());
                Ok(cert)
            }
            Err(err) => {
                let delay = failures.backoff.next_delay();
                failures.retry_at = Some(Instant::now() + delay);
                failures.last_error = err.to_string();
                match still_valid(&current) {
                    Some(cert) => {
                        tracing::warn!(identity = %id, error = %err, retry_in = ?delay,
                            "certificate renewal failed; keeping the current certificate");
                        Ok(cert)
                    }
                    None => {
                        tracing::warn!(identity = %id, error = %err, retry_in = ?delay,
                            "certificate issuance failed and no valid certificate is left; \
                             connections needing it are refused until the CA answers");
                        Err(err)
                    }
                }
            }
        }
    }

    /// Issues a new certificate for `id`, bypassing the cache: a fresh P-256 key, a CSR naming
    /// `id`, the source's signature, then checks (right SAN, our key, valid now, chains to the
    /// root the CA returned). The new certificate trusts the whole current bundle. Use
    /// [`SecretManager::fetch`] normally.
    pub(crate) async fn issue(&self, id: &Identity) -> Result<Arc<WorkloadCert>, ManagerError> {
        self.issuances.fetch_add(1, Ordering::Relaxed);
        let csr_err = |source| ManagerError::Csr {
            identity: id.to_string(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(csr_err)?)];
        let csr = params.serialize_request(&key).map_err(csr_err)?;

        #[cfg(test)]
        self.hooks.before_sign(id).await?;
        let signed = self.source.sign(&csr, id, self.ttl).await?;
        let source_roots = signed.roots.clone();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cert =
            validate(id, signed, key).map_err(|reason| ManagerError::InvalidCertificate {
                identity: id.to_string(),
                reason,
            })?;
        // Only roots of a verified answer join the bundle.
        {
            let mut bundle = self.bundle.lock().unwrap_or_else(|e| e.into_inner());
            cert.roots = bundle.observe(&source_roots, Instant::now());
            cert.root_certs = bundle.roots();
        }
        tracing::debug!(identity = %id, not_after = ?cert.not_after, "issued workload certificate");
        Ok(Arc::new(cert))
    }

    /// Drops `id`'s certificate (its pods are gone); a later fetch issues a new one.
    pub fn forget(&self, id: &Identity) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Identities with a cache slot, sorted (tests; the dump uses `certificate_states`).
    #[cfg(test)]
    pub(crate) fn cached_identities(&self) -> Vec<Identity> {
        let mut ids: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Every identity with a cache slot and where its certificate stands, sorted by identity,
    /// for `/config_dump`.
    pub(crate) fn certificate_states(&self) -> Vec<(Identity, CertState)> {
        let slots: Vec<(Identity, Arc<Slot>)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        let mut states: Vec<_> = slots
            .into_iter()
            .map(|(id, slot)| {
                let state = match slot.current() {
                    Some(cert) => CertState::Available(cert),
                    // Held while the CA is asked: the first issuance is under way.
                    None => match slot.issuing.try_lock() {
                        Ok(failures) if !failures.last_error.is_empty() => {
                            CertState::Unavailable(failures.last_error.clone())
                        }
                        _ => CertState::Initializing,
                    },
                };
                (id, state)
            })
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// How many issuances were attempted (successful or not), for metrics and tests.
    pub fn issuance_count(&self) -> u64 {
        self.issuances.load(Ordering::Relaxed)
    }

    /// Renews every cached certificate at its refresh point, so fetches on the data path find a
    /// fresh one instead of waiting for the CA. Optional: `fetch` alone already never returns an
    /// expired certificate. The task holds only a weak reference and ends at its next wake-up
    /// (at most a minute) after the manager is dropped.
    pub(crate) fn spawn_renewal(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<SecretManager> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(manager) = weak.upgrade() else {
                    return;
                };
                // notify_one keeps a permit, so an identity added during renew_due still wakes us.
                let changed = manager.changed.clone();
                let wait = manager.renew_due().await;
                drop(manager);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed.notified() => {}
                }
            }
        })
    }

    /// Fetches every identity whose certificate is due and returns how long until the next is.
    async fn renew_due(&self) -> Duration {
        let slots: Vec<(Identity, Arc<Slot>)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        let mut next = IDLE_RENEWAL_CHECK;
        for (id, slot) in slots {
            let now = SystemTime::now();
            let due = slot.current().map(|c| c.refresh_at()).unwrap_or(now);
            let wait = match due.duration_since(now) {
                Ok(wait) => wait,
                Err(_) => match self.fetch(&id).await {
                    Ok(cert) => cert.refresh_at().duration_since(now).unwrap_or(MIN_BACKOFF),
                    Err(_) => MIN_BACKOFF,
                },
            };
            next = next.min(wait.max(MIN_BACKOFF));
        }
        next
    }

    fn slot(&self, id: &Identity) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(id) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        slots.insert(id.clone(), slot.clone());
        self.changed.notify_one();
        slot
    }
}

/// Checks a CA answer before we present it: leaf carries exactly `id`, is for our key, is valid
/// now, and chains to the roots (so a misconfigured CA fails here, not in every handshake).
fn validate(
    id: &Identity,
    signed: Signed,
    key: PrivateKeyDer<'static>,
) -> Result<WorkloadCert, String> {
    let Signed { mut chain, roots } = signed;
    if chain.is_empty() {
        return Err("empty certificate chain".into());
    }
    // Istio's cert_chain ends with the root; peers have it, so don't send it.
    while chain.len() > 1 && chain.last().is_some_and(|c| roots.contains(c)) {
        chain.pop();
    }
    let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| format!("leaf: {e}"))?;

    let uris: Vec<&str> = leaf
        .subject_alternative_name()
        .map_err(|e| format!("leaf SAN: {e}"))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if uris != [id.to_string().as_str()] {
        return Err(format!(
            "leaf URI SANs are {uris:?}, expected exactly [{id}]"
        ));
    }

    let our_key = KeyPair::try_from(&key).map_err(|e| format!("own key: {e}"))?;
    if leaf.public_key().subject_public_key.data.as_ref() != our_key.public_key_raw() {
        return Err("leaf is not for the key in our CSR".into());
    }

    let to_time = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| format!("validity time {t} before 1970"))
    };
    let not_before = to_time(leaf.validity().not_before)?;
    let not_after = to_time(leaf.validity().not_after)?;
    let now = SystemTime::now();
    if not_after <= now || not_after <= not_before {
        return Err(format!(
            "leaf validity {not_before:?}..{not_after:?} is over or empty"
        ));
    }
    if not_before > now + CA_CLOCK_SKEW {
        return Err(format!(
            "leaf is not valid before {not_before:?}; is the CA clock ahead?"
        ));
    }

    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|e| format!("root: {e}"))?;
    }
    let parsed =
        rustls::server::ParsedCertificate::try_from(&chain[0]).map_err(|e| e.to_string())?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        &chain[1..],
        UnixTime::now(),
        crate::tls::signature_algorithms().all,
    )
    .map_err(|e| format!("chain does not verify against the roots: {e}"))?;
    drop(parsed);

    Ok(WorkloadCert {
        identity: id.clone(),
        chain,
        key,
        roots: Arc::new(store),
        root_certs: Vec::new(),
        not_before,
        not_after,
        issued_at: now,
        tls_configs: TlsConfigs::default(),
    })
}

#[cfg(test)]
mod tests;
