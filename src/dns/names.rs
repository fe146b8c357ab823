//! The names a query may stand for, as a Kubernetes pod's resolver builds them.
//!
//! A pod in namespace `ns` has the search list `ns.svc.<domain> svc.<domain> <domain>`, so
//! `svc`, `svc.ns2` and `svc.ns2.svc` all mean `svc.ns2.svc.<domain>` (`ns2` defaulting to the
//! pod's own namespace). A resolver may send the short name as is, or with a search domain
//! already appended (`svc.ns2.ns.svc.<domain>`); both are recognised, as ztunnel does.

/// The hostnames to look up for `name` (lower case, no trailing dot) asked by a client in
/// `namespace` (unknown: the name only), most specific first, without duplicates.
pub(crate) fn candidates(name: &str, namespace: Option<&str>, domain: &str) -> Vec<String> {
    let mut out = vec![name.to_owned()];
    let Some(ns) = namespace else {
        return out;
    };
    let mut bases = vec![name];
    for search in [
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ] {
        if let Some(stripped) = name
            .strip_suffix(search.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|rest| !rest.is_empty())
        {
            bases.push(stripped);
        }
    }
    for base in bases {
        push_unique(&mut out, base.to_owned());
        let labels = base.split('.').count();
        let expanded = match labels {
            1 => Some(format!("{base}.{ns}.svc.{domain}")),
            2 => Some(format!("{base}.svc.{domain}")),
            3 if base.ends_with(".svc") => Some(format!("{base}.{domain}")),
            _ => None,
        };
        if let Some(fqdn) = expanded {
            push_unique(&mut out, fqdn);
        }
    }
    out
}

fn push_unique(out: &mut Vec<String>, name: String) {
    if !out.contains(&name) {
        out.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::candidates;

    const D: &str = "cluster.local";

    #[test]
    fn short_names_expand_through_the_pods_search_domains() {
        let fqdn = "web.shop.svc.cluster.local";
        for name in [
            "web",
            "web.shop",
            "web.shop.svc",
            fqdn,
            "web.shop.shop.svc.cluster.local",
            "web.shop.svc.cluster.local.cluster.local",
        ] {
            assert!(
                candidates(name, Some("shop"), D).contains(&fqdn.to_owned()),
                "{name}: {:?}",
                candidates(name, Some("shop"), D)
            );
        }
        // Another namespace's service by `svc.ns`, from a pod in `shop`.
        assert!(candidates("db.data", Some("shop"), D)
            .contains(&"db.data.svc.cluster.local".to_owned()));
        // `web` from a pod in `other` is other's web, never shop's.
        assert!(!candidates("web", Some("other"), D).contains(&fqdn.to_owned()));
    }

    #[test]
    fn without_a_namespace_only_the_name_itself() {
        assert_eq!(candidates("web", None, D), vec!["web".to_owned()]);
    }

    #[test]
    fn other_names_are_not_expanded() {
        assert_eq!(
            candidates("api.example.com", Some("shop"), D),
            vec!["api.example.com".to_owned()]
        );
    }
}
