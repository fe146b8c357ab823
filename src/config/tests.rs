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
    assert!(matches!(cfg.mode, Mode::Shared(_)), "{:?}", cfg.mode);
    assert_eq!(cfg.ca.source, CaSource::Fake);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(5));
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
        ("PROXY_MODE", "dedicated"),
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
        ("PROXY_MODE", "dedicated"),
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

    let dedicated =
        Config::from_vars(&vars(&[base[0], base[1], ("PROXY_MODE", "dedicated")])).unwrap();
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

#[test]
fn the_default_mode_is_shared_as_in_ztunnel() {
    let cfg = Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")]));
    assert!(matches!(cfg.unwrap().mode, Mode::Shared(_)));
    // A dedicated tunnel says so; a workload filter alone does not switch the mode.
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("PROXY_WORKLOAD_INFO", "default/client/sleep"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("PROXY_MODE=dedicated"), "{err}");
}

/// The drain deadline of a config with `pairs` on top of a minimal one.
fn deadline(pairs: &[(&str, &str)]) -> Result<Duration, ConfigError> {
    let mut all = vec![("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    all.extend_from_slice(pairs);
    Config::from_vars(&vars(&all)).map(|c| c.drain_timeout)
}

#[test]
fn the_drain_deadline_follows_the_grace_period_as_in_ztunnel() {
    let secs = Duration::from_secs;
    assert_eq!(deadline(&[]).unwrap(), secs(5));
    // The chart's default grace period (30 s): five seconds before the kubelet's SIGKILL.
    assert_eq!(
        deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "30")]).unwrap(),
        secs(25)
    );
    assert_eq!(
        deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "11")]).unwrap(),
        secs(6)
    );
    // Ten seconds or less: one second of margin, never below one second.
    assert_eq!(
        deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "10")]).unwrap(),
        secs(9)
    );
    assert_eq!(
        deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "2")]).unwrap(),
        secs(1)
    );
    assert_eq!(
        deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "0")]).unwrap(),
        secs(1)
    );
    // An explicit deadline wins over the grace period.
    let both = [
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("CONNECTION_TERMINATION_DEADLINE", "12s"),
    ];
    assert_eq!(deadline(&both).unwrap(), secs(12));
    assert_eq!(
        deadline(&[("CONNECTION_TERMINATION_DEADLINE", "7")]).unwrap(),
        secs(7)
    );
    assert_eq!(
        deadline(&[
            ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
            ("DRAIN_TIMEOUT", "3s")
        ])
        .unwrap(),
        secs(3)
    );
}

#[test]
fn bad_drain_settings_name_the_variable() {
    let err = deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "30s")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("TERMINATION_GRACE_PERIOD_SECONDS=\"30s\": expected a whole number"),
        "{err}"
    );
    let err = deadline(&[("TERMINATION_GRACE_PERIOD_SECONDS", "-1")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("TERMINATION_GRACE_PERIOD_SECONDS=\"-1\""),
        "{err}"
    );
    let err = deadline(&[("CONNECTION_TERMINATION_DEADLINE", "soon")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CONNECTION_TERMINATION_DEADLINE=\"soon\""),
        "{err}"
    );
    let err = deadline(&[
        ("CONNECTION_TERMINATION_DEADLINE", "10s"),
        ("DRAIN_TIMEOUT", "10s"),
    ])
    .unwrap_err();
    assert!(
        err.to_string().starts_with("DRAIN_TIMEOUT=\"10s\"")
            && err.to_string().contains("CONNECTION_TERMINATION_DEADLINE"),
        "{err}"
    );
}

/// The worker count for `pairs` on a host with `cores` cores.
fn workers(pairs: &[(&str, &str)], cores: usize) -> Result<usize, ConfigError> {
    let map = vars(pairs);
    workers::worker_threads(&env::Env::new(&map), || cores)
}

#[test]
fn worker_threads_are_sized_from_the_cpu_settings_as_in_ztunnel() {
    // Nothing set: a quarter of the cores, at least 2.
    assert_eq!(workers(&[], 2).unwrap(), 2);
    assert_eq!(workers(&[], 16).unwrap(), 4);
    assert_eq!(workers(&[], 17).unwrap(), 5);
    // The chart's defaults: ZTUNNEL_CPU_LIMIT is the node's cores, the request 200m → 1.
    let chart = [
        ("ZTUNNEL_CPU_LIMIT", "4"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1"),
    ];
    assert_eq!(workers(&chart, 64).unwrap(), 2, "the limit, not the host");
    assert_eq!(workers(&[("ZTUNNEL_CPU_LIMIT", "32")], 2).unwrap(), 8);
    // A request raises the floor.
    assert_eq!(
        workers(&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "3")], 4).unwrap(),
        3
    );
    assert_eq!(
        workers(&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "2500m")], 4).unwrap(),
        3
    );
    // An explicit limit is used as is, even below 2, raised only by the request.
    assert_eq!(
        workers(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m")], 16).unwrap(),
        1
    );
    assert_eq!(
        workers(
            &[
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "1.5"),
                ("ZTUNNEL_CPU_LIMIT", "64")
            ],
            16
        )
        .unwrap(),
        2
    );
    assert_eq!(
        workers(
            &[
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"),
                ("ZTUNNEL_RESOURCE_CPU_REQUEST", "3")
            ],
            16
        )
        .unwrap(),
        3
    );
}

#[test]
fn worker_threads_can_be_set_as_a_count_a_share_or_every_core() {
    assert_eq!(workers(&[("ZTUNNEL_WORKER_THREADS", "6")], 2).unwrap(), 6);
    assert_eq!(workers(&[("WORKER_THREADS", "3")], 2).unwrap(), 3);
    assert_eq!(workers(&[("ZTUNNEL_WORKER_THREADS", "0")], 12).unwrap(), 12);
    let share = |pct, limit| {
        workers(
            &[
                ("ZTUNNEL_WORKER_THREADS", pct),
                ("ZTUNNEL_CPU_LIMIT", limit),
            ],
            99,
        )
        .unwrap()
    };
    assert_eq!(share("50%", "8"), 4);
    assert_eq!(share("30%", "16"), 5);
    assert_eq!(share("10%", "4"), 1);
    // An explicit resource limit names the cores a share is taken of.
    assert_eq!(
        workers(
            &[
                ("ZTUNNEL_WORKER_THREADS", "100%"),
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "3"),
                ("ZTUNNEL_CPU_LIMIT", "8"),
            ],
            99
        )
        .unwrap(),
        3
    );
    // Never zero, which the runtime would refuse.
    assert_eq!(
        workers(
            &[("ZTUNNEL_WORKER_THREADS", "0"), ("ZTUNNEL_CPU_LIMIT", "0")],
            4
        )
        .unwrap(),
        1
    );
}

#[test]
fn bad_worker_settings_name_the_variable() {
    let starts = |pairs: &[(&str, &str)], prefix: &str| {
        let err = workers(pairs, 4).unwrap_err().to_string();
        assert!(err.starts_with(prefix), "{err}");
    };
    starts(
        &[("ZTUNNEL_WORKER_THREADS", "many")],
        "ZTUNNEL_WORKER_THREADS=\"many\"",
    );
    starts(
        &[("ZTUNNEL_WORKER_THREADS", "0%")],
        "ZTUNNEL_WORKER_THREADS=\"0%\"",
    );
    starts(
        &[("ZTUNNEL_WORKER_THREADS", "150%")],
        "ZTUNNEL_WORKER_THREADS=\"150%\"",
    );
    starts(
        &[("ZTUNNEL_WORKER_THREADS", "x%")],
        "ZTUNNEL_WORKER_THREADS=\"x%\"",
    );
    starts(&[("ZTUNNEL_CPU_LIMIT", "2.5")], "ZTUNNEL_CPU_LIMIT=\"2.5\"");
    starts(
        &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "0")],
        "ZTUNNEL_RESOURCE_CPU_LIMIT=\"0\": expected a positive CPU quantity",
    );
    starts(
        &[("ZTUNNEL_RESOURCE_CPU_REQUEST", "1Gi")],
        "ZTUNNEL_RESOURCE_CPU_REQUEST=\"1Gi\"",
    );
    starts(
        &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "NaN")],
        "ZTUNNEL_RESOURCE_CPU_LIMIT=\"NaN\"",
    );
    starts(
        &[("ZTUNNEL_WORKER_THREADS", "4"), ("WORKER_THREADS", "2")],
        "WORKER_THREADS=\"2\": ZTUNNEL_WORKER_THREADS is set too",
    );
    starts(&[("WORKER_THREADS", "0")], "WORKER_THREADS=\"0\"");
    // Through the whole config, too.
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("ZTUNNEL_CPU_LIMIT", "four"),
    ]))
    .unwrap_err();
    assert!(err.to_string().starts_with("ZTUNNEL_CPU_LIMIT="), "{err}");
}

/// A remote-source config from `pairs` (an xDS and a CA address plus `pairs`).
fn remote(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut all = vec![
        ("XDS_ADDRESS", "https://cp.example:15012"),
        ("XDS_ROOT_CA", "SYSTEM"),
        ("CA_ADDRESS", "https://ca.example:15012"),
        ("CA_ROOT_CA", "SYSTEM"),
    ];
    all.extend_from_slice(pairs);
    Config::from_vars(&vars(&all))
}

fn xds_target(cfg: &Config) -> &crate::grpc::GrpcTarget {
    match &cfg.source {
        ConfigSource::Xds(xds) => &xds.target,
        other => panic!("expected xDS, got {other:?}"),
    }
}

fn ca_target(cfg: &Config) -> &crate::grpc::GrpcTarget {
    match &cfg.ca.source {
        CaSource::Remote(target) => target,
        other => panic!("expected a remote CA, got {other:?}"),
    }
}

fn header_list(target: &crate::grpc::GrpcTarget) -> Vec<(String, String)> {
    target
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

#[test]
fn xds_and_ca_headers_go_to_their_own_service() {
    let cfg = remote(&[
        ("XDS_HEADER_X_TENANT", "blue"),
        ("XDS_HEADER_x-route", "east west"),
        ("CA_HEADER_X_CA_KEY", "k1"),
        ("XDS_HEADERX", "not a header: no separator"),
    ])
    .unwrap();
    assert_eq!(
        header_list(xds_target(&cfg)),
        [
            ("x_tenant".to_string(), "blue".to_string()),
            ("x-route".to_string(), "east west".to_string())
        ]
    );
    assert_eq!(
        header_list(ca_target(&cfg)),
        [("x_ca_key".to_string(), "k1".to_string())]
    );
    assert!(header_list(ca_target(&remote(&[]).unwrap())).is_empty());
}

#[test]
fn bad_headers_name_the_variable_and_hide_the_value() {
    let refused = |var: &str, value: &str| remote(&[(var, value)]).unwrap_err().to_string();
    let err = refused("XDS_HEADER_", "v");
    assert!(err.starts_with("XDS_HEADER_: "), "{err}");
    let err = refused("XDS_HEADER_BAD NAME", "v");
    assert!(err.starts_with("XDS_HEADER_BAD NAME: "), "{err}");
    let err = refused("CA_HEADER_TRACE-BIN", "v");
    assert!(err.starts_with("CA_HEADER_TRACE-BIN: "), "{err}");
    let err = refused("CA_HEADER_X_SECRET", "line\nbreak-secret");
    assert!(err.starts_with("CA_HEADER_X_SECRET: the value"), "{err}");
    assert!(!err.contains("secret\""), "the value is not echoed: {err}");
    let err = refused("XDS_HEADER_CONTENT-TYPE", "text/plain");
    assert!(err.contains("belongs to the gRPC protocol"), "{err}");
    let err = refused("XDS_HEADER_GRPC-ENCODING", "gzip");
    assert!(err.contains("belongs to the gRPC protocol"), "{err}");
}

#[test]
fn alternate_hostnames_replace_the_name_each_certificate_is_checked_against() {
    let cfg = remote(&[
        ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        ("ALT_CA_HOSTNAME", "ca.internal"),
    ])
    .unwrap();
    assert_eq!(
        xds_target(&cfg).tls_server_name.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(
        ca_target(&cfg).tls_server_name.as_deref(),
        Some("ca.internal")
    );
    let plain = remote(&[]).unwrap();
    assert_eq!(xds_target(&plain).tls_server_name, None);
    assert_eq!(ca_target(&plain).tls_server_name, None);
    let err = remote(&[("ALT_XDS_HOSTNAME", "not a name!")])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("ALT_XDS_HOSTNAME=\"not a name!\""), "{err}");
}

#[test]
fn istiod_is_the_default_address_inside_kubernetes_only() {
    let in_pod = Config::from_vars(&vars(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("XDS_ROOT_CA", "SYSTEM"),
        ("CA_ROOT_CA", "SYSTEM"),
    ]))
    .unwrap();
    assert_eq!(
        xds_target(&in_pod).address,
        "https://istiod.istio-system.svc:15012"
    );
    assert_eq!(
        ca_target(&in_pod).address,
        "https://istiod.istio-system.svc:15012"
    );
    // Another source named explicitly: no default for that one.
    let local = Config::from_vars(&vars(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
    ]))
    .unwrap();
    assert_eq!(local.source, ConfigSource::File("/x.yaml".into()));
    assert_eq!(local.ca.source, CaSource::Fake);
    // Outside a cluster nothing is guessed.
    assert_eq!(
        Config::from_vars(&vars(&[("FAKE_CA", "true")])).unwrap_err(),
        ConfigError::NoConfigSource
    );
    assert_eq!(
        Config::from_vars(&vars(&[("LOCAL_XDS_PATH", "/x")])).unwrap_err(),
        ConfigError::NoCertificateSource
    );
}

/// The env of Istio's ztunnel chart (tests/fixtures/charts/ztunnel.env), as the daemon reads it.
#[test]
fn the_charts_env_is_read_with_ztunnels_meaning() {
    let text = include_str!("../../tests/fixtures/charts/ztunnel.env");
    let mut pairs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .map(|l| l.split_once('=').expect("env NAME=value"))
        .collect();
    // The mounted root certificate does not exist here; the system roots stand in.
    pairs.push(("XDS_ROOT_CA", "SYSTEM"));
    pairs.push(("CA_ROOT_CA", "SYSTEM"));
    let cfg = Config::from_vars(&vars(&pairs)).unwrap();
    assert!(matches!(cfg.mode, Mode::Shared(_)), "{:?}", cfg.mode);
    assert_eq!(
        xds_target(&cfg).address,
        "https://istiod.istio-system.svc:15012"
    );
    assert_eq!(
        ca_target(&cfg).address,
        "https://istiod.istio-system.svc:15012"
    );
    assert_eq!(cfg.cluster_id, "Kubernetes");
    assert_eq!(cfg.node_name.as_deref(), Some("node-a"));
    assert_eq!(cfg.drain_timeout, Duration::from_secs(25));
    assert_eq!(cfg.worker_threads, 2);
    let ConfigSource::Xds(xds) = &cfg.source else {
        unreachable!()
    };
    assert_eq!(
        xds.node.node_id(),
        "ztunnel~10.244.0.17~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local"
    );
}

#[test]
fn a_crl_the_tunnel_cannot_check_stops_it_rather_than_being_ignored() {
    let err = Config::from_vars(&vars(&[
        ("LOCAL_XDS_PATH", "/x.yaml"),
        ("FAKE_CA", "true"),
        ("CRL_PATH", "/var/run/secrets/istio/crl/ca-crl.pem"),
    ]))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CRL_PATH=\"/var/run/secrets/istio/crl/ca-crl.pem\": certificate revocation lists are not supported"),
        "{err}"
    );
}

#[test]
fn the_dns_proxy_is_on_by_default_on_loopback_15053_and_bad_values_are_refused() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    let cfg = Config::from_vars(&vars(&base)).unwrap();
    assert!(cfg.dns.enabled, "ztunnel's default");
    assert_eq!(cfg.dns.addr, "127.0.0.1:15053".parse().unwrap());
    let off = [base[0], base[1], ("ISTIO_META_DNS_CAPTURE", "false")];
    assert!(!Config::from_vars(&vars(&off)).unwrap().dns.enabled);
    let moved = [
        base[0],
        base[1],
        ("ISTIO_META_DNS_PROXY_ADDR", "0.0.0.0:5353"),
    ];
    assert_eq!(
        Config::from_vars(&vars(&moved)).unwrap().dns.addr,
        "0.0.0.0:5353".parse().unwrap()
    );
    for (var, value) in [
        ("ISTIO_META_DNS_CAPTURE", "sometimes"),
        ("ISTIO_META_DNS_PROXY_ADDR", "localhost"),
    ] {
        let bad = [base[0], base[1], (var, value)];
        let err = Config::from_vars(&vars(&bad)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{var}=\"{value}\"")), "{err}");
    }
}

#[test]
fn hbone_bounds_and_keepalives_default_to_ztunnels_and_are_checked() {
    let base = [("LOCAL_XDS_PATH", "/x.yaml"), ("FAKE_CA", "true")];
    let cfg = Config::from_vars(&vars(&base)).unwrap();
    assert_eq!(cfg.hbone.handshake_timeout, Duration::from_secs(10));
    assert_eq!(cfg.hbone.max_connections, 16384);
    assert_eq!(cfg.hbone.max_connections_per_ip, 1024);
    assert_eq!(cfg.hbone.ping, PingConfig::default());
    assert_eq!(cfg.hbone.ping.interval, Duration::from_secs(10));
    assert_eq!(cfg.keepalive, Some(TcpKeepalive::default()));
    assert_eq!(TcpKeepalive::default().time, Duration::from_secs(180));
    let cfg = Config::from_vars(&vars(&[
        base[0],
        base[1],
        ("HBONE_HANDSHAKE_TIMEOUT", "2s"),
        ("KEEPALIVE_ENABLED", "false"),
    ]))
    .unwrap();
    assert_eq!(cfg.hbone.handshake_timeout, Duration::from_secs(2));
    assert_eq!(cfg.keepalive, None);
    for (var, value, why) in [
        ("HBONE_HANDSHAKE_TIMEOUT", "0s", "must be more than zero"),
        ("HBONE_MAX_CONNECTIONS_PER_IP", "0", "must be at least 1"),
        ("KEEPALIVE_RETRIES", "0", "must be between 1 and 4294967295"),
    ] {
        let err = Config::from_vars(&vars(&[base[0], base[1], (var, value)])).unwrap_err();
        assert_eq!(err.to_string(), format!("{var}=\"{value}\": {why}"));
    }
}
