use super::*;
use crate::identity::LocalCa;

fn root() -> CertificateDer<'static> {
    LocalCa::generate("cluster.local")
        .unwrap()
        .root_certs()
        .remove(0)
}

#[test]
fn keeps_an_old_root_for_the_retention_then_drops_it() {
    let (old, new) = (root(), root());
    let retention = Duration::from_secs(100);
    let mut bundle = TrustBundle::new(retention);
    let start = Instant::now();

    assert_eq!(bundle.observe(std::slice::from_ref(&old), start).len(), 1);
    // Rotation: the CA now answers with the new root only.
    let t = start + Duration::from_secs(10);
    assert_eq!(bundle.observe(std::slice::from_ref(&new), t).len(), 2);
    // Still within the retention of the old root's last sighting.
    let t = start + retention;
    assert_eq!(bundle.observe(std::slice::from_ref(&new), t).len(), 2);
    // Past it: only the new root is left.
    let t = start + retention + Duration::from_secs(1);
    let store = bundle.observe(std::slice::from_ref(&new), t);
    assert_eq!(store.len(), 1);
    assert_eq!(bundle.len(), 1);
    assert_eq!(bundle.roots[0].0, new);
}

#[test]
fn a_root_seen_again_is_kept_longer() {
    let (a, b) = (root(), root());
    let retention = Duration::from_secs(100);
    let mut bundle = TrustBundle::new(retention);
    let start = Instant::now();
    bundle.observe(std::slice::from_ref(&a), start);
    // A CA answering with both (as LocalCa does during a rotation) refreshes both.
    bundle.observe(&[a.clone(), b.clone()], start + Duration::from_secs(90));
    let store = bundle.observe(std::slice::from_ref(&b), start + Duration::from_secs(150));
    assert_eq!(store.len(), 2, "a was seen 60 s ago");
    assert_eq!(
        bundle
            .observe(std::slice::from_ref(&a), start + Duration::from_secs(150))
            .len(),
        2
    );
}
