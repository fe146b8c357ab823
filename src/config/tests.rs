//! The configuration's variables, defaults and errors, read from plain maps.

use std::path::PathBuf;

use super::mode::DEFAULT_INPOD_UDS;
use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_follow_ztunnel() {
    let cfg =
        Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")])).unwrap();
    assert_eq!(cfg.mode, Mode::Dedicated { workload: None });
    assert_eq!(cfg.ca.source, CaSource::Fake);
    assert_eq!(cfg.cluster_id, "Kubernetes");
    assert_eq!(cfg.cluster_domain, "cluster.local");
    assert_eq!(cfg.pool.max_streams_per_connection, 100);
    assert_eq!(cfg.ca.secret_ttl, Duration::from_secs(86400));
    assert_eq!(cfg.listen.admin_addr, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(cfg.listen.readiness_addr.port(), 15021);
}

#[test]
fn errors_name_the_variable() {
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "maybe"),
    ]))
    .unwrap_err();
    assert_eq!(err.to_string(), "FAKE_CA=\"maybe\": expected true or false");
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("SECRET_TTL", "ten minutes"),
    ]))
    .unwrap_err();
    assert!(
        err.to_string().starts_with("SECRET_TTL=\"ten minutes\""),
        "{err}"
    );
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_WORKLOAD_INFO", "default/only-two"),
    ]))
    .unwrap_err();
    assert!(err.to_string().starts_with("PROXY_WORKLOAD_INFO="), "{err}");
}

#[test]
fn refuses_to_run_without_sources() {
    assert_eq!(
        Config::from_vars(&vars(&[("FAKE_CA", "true")])).unwrap_err(),
        ConfigError::NoConfigSource
    );
    assert_eq!(
        Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x")])).unwrap_err(),
        ConfigError::NoCertificateSource
    );
    assert_eq!(
        Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x"),
            ("FAKE_CA", "true"),
            ("LOCAL_CA_DIR", "/ca")
        ]))
        .unwrap_err()
        .to_string(),
        "FAKE_CA=true and LOCAL_CA_DIR are set; choose one certificate source"
    );
    assert_eq!(
        Config::from_vars(&vars(&[
            ("LOCAL_XDS_PATH", "/x"),
            ("XDS_ADDRESS", "https://cp:15012"),
            ("FAKE_CA", "true"),
        ]))
        .unwrap_err(),
        ConfigError::ConflictingConfigSources
    );
}

#[test]
fn control_plane_settings_use_istio_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root-cert.pem");
    let token = dir.path().join("token");
    std::fs::write(&root, "pem").unwrap();
    std::fs::write(&token, "t").unwrap();
    let (root_s, token_s) = (root.to_str().unwrap(), token.to_str().unwrap());
    let cfg = Config::from_vars(&vars(&[
        ("XDS_ADDRESS", "10.0.0.1:15012"),
        ("XDS_ROOT_CA", root_s),
        ("XDS_AUTH_TOKEN", token_s),
        ("CA_ADDRESS", "https://ca.example:15012"),
        ("CA_ROOT_CA", "SYSTEM"),
        ("CLUSTER_ID", "c1"),
        ("POD_NAME", "ztunnel-abc"),
        ("POD_NAMESPACE", "istio-system"),
        ("INSTANCE_IP", "10.0.0.7"),
        ("NODE_NAME", "node-1"),
        ("ISTIO_META_DNS_CAPTURE", "true"),
    ]))
    .unwrap();
    let ConfigSource::Xds(xds) = &cfg.source else {
        panic!("expected xDS, got {:?}", cfg.source);
    };
    assert_eq!(xds.target.address, "https://10.0.0.1:15012");
    assert_eq!(xds.target.root_cert.as_deref(), Some(root.as_path()));
    assert_eq!(xds.target.token.as_deref(), Some(token.as_path()));
    assert_eq!(xds.target.cluster_id, "c1");
    assert_eq!(
        xds.node.node_id(),
        "ztunnel~10.0.0.7~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    );
    assert_eq!(xds.node.node_name, "node-1");
    assert_eq!(
        xds.node
            .extra_metadata
            .get("DNS_CAPTURE")
            .map(String::as_str),
        Some("true")
    );
    let CaSource::Remote(ca) = &cfg.ca.source else {
        panic!("expected a remote CA, got {:?}", cfg.ca.source);
    };
    assert_eq!(ca.address, "https://ca.example:15012");
    assert_eq!(ca.root_cert, None, "SYSTEM means the system roots");

    let err = Config::from_vars(&vars(&[
        ("XDS_ADDRESS", "https://cp:15012"),
        ("XDS_AUTH_TOKEN", "/nonexistent/token"),
        ("FAKE_CA", "true"),
    ]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "XDS_AUTH_TOKEN=/nonexistent/token: the file does not exist"
    );
    let err = Config::from_vars(&vars(&[("XDS_ADDRESS", "https://cp"), ("FAKE_CA", "true")]))
        .unwrap_err();
    assert!(err.to_string().starts_with("XDS_ADDRESS="), "{err}");
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x"),
        ("CA_ADDRESS", "https://cp:15012"),
        ("LOCAL_CA_DIR", "/ca"),
    ]))
    .unwrap_err();
    assert!(matches!(err, ConfigError::ConflictingCertificateSources(_)));
}

#[test]
fn parses_workload_info() {
    let cfg = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("LOCAL_CA_DIR", "/ca"),
        ("PROXY_WORKLOAD_INFO", "default/client/sleep"),
    ]))
    .unwrap();
    assert_eq!(
        cfg.mode,
        Mode::Dedicated {
            workload: Some(ProxyWorkloadInfo {
                namespace: "default".into(),
                name: "client".into(),
                service_account: "sleep".into()
            })
        }
    );
}

/// The in-pod settings of a shared-mode config.
fn shared(cfg: Config) -> InpodConfig {
    match cfg.mode {
        Mode::Shared(inpod) => inpod,
        other => panic!("expected shared mode, got {other:?}"),
    }
}

#[test]
fn shared_mode_reads_the_inpod_settings() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    let cfg = Config::from_vars(&vars(&[base[0], base[1], ("PROXY_MODE", "shared")])).unwrap();
    assert!(matches!(cfg.mode, Mode::Shared(_)), "{:?}", cfg.mode);
    let inpod = shared(cfg);
    assert_eq!(inpod.uds, PathBuf::from(DEFAULT_INPOD_UDS));
    assert_eq!(inpod.mark, 0x539);
    assert!(inpod.port_reuse);

    let cfg = Config::from_vars(&vars(&[
        base[0],
        base[1],
        ("PROXY_MODE", "shared"),
        ("INPOD_UDS", "/run/agent.sock"),
        ("PACKET_MARK", "4242"),
        ("INPOD_PORT_REUSE", "false"),
    ]))
    .unwrap();
    let inpod = shared(cfg);
    assert_eq!(inpod.uds, PathBuf::from("/run/agent.sock"));
    assert_eq!(inpod.mark, 4242);
    assert!(!inpod.port_reuse);

    let dedicated = Config::from_vars(&vars(&base)).unwrap();
    assert_eq!(dedicated.mode, Mode::Dedicated { workload: None });
}

#[test]
fn shared_mode_rejects_what_does_not_fit() {
    let base = [
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_MODE", "shared"),
    ];
    let err =
        Config::from_vars(&vars(&[base[0], base[1], base[2], ("PACKET_MARK", "0")])).unwrap_err();
    assert!(err.to_string().starts_with("PACKET_MARK=\"0\""), "{err}");
    let err = Config::from_vars(&vars(&[
        base[0],
        base[1],
        base[2],
        ("INPOD_MARK", "99999999999"),
    ]))
    .unwrap_err();
    assert!(err.to_string().starts_with("INPOD_MARK="), "{err}");
    let err = Config::from_vars(&vars(&[
        base[0],
        base[1],
        base[2],
        ("PROXY_WORKLOAD_INFO", "default/client/sleep"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("PROXY_MODE=dedicated"), "{err}");
}

#[test]
fn parses_go_durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration(""), None);
    assert_eq!(
        parse_duration("18000000000000000000s18000000000000000000s"),
        None,
        "overflow is an error, not a panic"
    );
}

#[test]
fn runtime_and_pool_limits_are_checked() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    let cfg = Config::from_vars(&vars(&base)).unwrap();
    assert_eq!(cfg.worker_threads, 2);
    let cfg = Config::from_vars(&vars(&[base[0], base[1], ("WORKER_THREADS", "4")])).unwrap();
    assert_eq!(cfg.worker_threads, 4);
    let err = Config::from_vars(&vars(&[base[0], base[1], ("WORKER_THREADS", "0")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "WORKER_THREADS=\"0\": expected a whole number of at least 1"
    );
    let err = Config::from_vars(&vars(&[
        base[0],
        base[1],
        ("POOL_MAX_STREAMS_PER_CONNECTION", "0"),
    ]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "POOL_MAX_STREAMS_PER_CONNECTION=\"0\": must be at least 1"
    );
}

#[test]
fn shared_mode_refuses_any_workload_filter() {
    // Even a malformed filter is refused for being set at all, which is the actual mistake.
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_MODE", "shared"),
        ("PROXY_WORKLOAD_INFO", "not-a-triple"),
    ]))
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "PROXY_WORKLOAD_INFO=\"not-a-triple\": only meaningful with PROXY_MODE=dedicated"
        ),
        "{err}"
    );
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_MODE", "in-pod"),
    ]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "PROXY_MODE=\"in-pod\": expected \"dedicated\" or \"shared\""
    );
}

#[test]
fn tunnel_ports_are_the_fixed_ones_the_defaults_and_the_configured_endpoints() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    let default = Config::from_vars(&vars(&base)).unwrap();
    for port in [15001, 15006, 15008, 15000, 15020, 15021] {
        assert!(default.listen.is_tunnel_port(port), "{port}");
    }
    for port in [80, 8080, 15002, 15009, 15090] {
        assert!(!default.listen.is_tunnel_port(port), "{port}");
    }
    // Moved endpoints: the ports they now listen on are the tunnel's too, and the default
    // ports stay refused.
    let moved = Config::from_vars(&vars(&[
        base[0],
        base[1],
        ("ADMIN_ADDR", "127.0.0.1:9900"),
        ("STATS_ADDR", "[::]:9901"),
        ("READINESS_ADDR", "0.0.0.0:9902"),
    ]))
    .unwrap();
    for port in [9900, 9901, 9902, 15000, 15020, 15021, 15008] {
        assert!(moved.listen.is_tunnel_port(port), "{port}");
    }
    assert!(!moved.listen.is_tunnel_port(9903));
}

#[test]
fn live_connection_rechecks_are_on_unless_switched_off() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    assert!(
        Config::from_vars(&vars(&base))
            .unwrap()
            .recheck_live_connections
    );
    let with = |value| {
        let mut pairs = base.to_vec();
        pairs.push(("ENFORCE_POLICY_ON_LIVE_CONNECTIONS", value));
        Config::from_vars(&vars(&pairs))
    };
    assert!(!with("false").unwrap().recheck_live_connections);
    assert!(with("true").unwrap().recheck_live_connections);
    assert_eq!(
        with("sometimes").unwrap_err().to_string(),
        "ENFORCE_POLICY_ON_LIVE_CONNECTIONS=\"sometimes\": expected true or false"
    );
}

#[test]
fn the_cluster_id_comes_from_istio_meta_cluster_id_first_as_in_ztunnel() {
    let cluster = |pairs: &[(&str, &str)]| {
        let mut all = vec![("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
        all.extend_from_slice(pairs);
        Config::from_vars(&vars(&all)).unwrap().cluster_id
    };
    assert_eq!(cluster(&[]), "Kubernetes");
    assert_eq!(cluster(&[("CLUSTER_ID", "c1")]), "c1");
    assert_eq!(
        cluster(&[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "chart")]),
        "chart"
    );
}
