use super::*;

#[test]
fn defaults_follow_istio() {
    let c = AgentConfig::try_parse_from(["agent", "--node-name", "n1"]).unwrap();
    assert_eq!(c.run_dir, PathBuf::from("/var/run/istio-cni"));
    assert_eq!(
        c.event_socket(),
        PathBuf::from("/var/run/istio-cni/pluginevent.sock")
    );
    assert_eq!(
        c.plugin_kubeconfig(),
        PathBuf::from("/var/run/istio-cni/istio-cni-kubeconfig")
    );
    assert_eq!(
        c.ztunnel_uds_address,
        PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
    assert_eq!(c.health_addr.port(), 8000);
    assert_eq!(c.exclude_namespaces, vec!["kube-system".to_string()]);
    assert!(c.ambient_enabled && !c.ambient_disable_safe_upgrade && !c.native_nftables);
    assert_eq!(c.daemonset_name, "istio-cni-node");
}

#[test]
fn lists_and_booleans_parse() {
    let c = AgentConfig::try_parse_from([
        "agent",
        "--node-name",
        "n1",
        "--exclude-namespaces",
        "a,b",
        "--ambient-dns-capture",
        "true",
    ])
    .unwrap();
    assert_eq!(c.exclude_namespaces, vec!["a", "b"]);
    assert!(c.ambient_dns_capture);
    let missing = AgentConfig::try_parse_from(["agent"]).unwrap_err();
    assert!(missing.to_string().contains("--node-name"), "{missing}");
}
