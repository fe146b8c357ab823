use super::*;

#[test]
fn k8s_args_from_containerd_style_string() {
    let args = K8sArgs::parse(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=app;K8S_POD_NAME=web-0;\
         K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1;",
    )
    .unwrap();
    assert_eq!(args.pod(), Some(("app", "web-0")));
    assert_eq!(args.pod_infra_container_id.as_deref(), Some("abc123"));
    assert_eq!(args.pod_uid.as_deref(), Some("u-1"));
}

#[test]
fn k8s_args_edge_cases() {
    assert_eq!(K8sArgs::parse("").unwrap(), K8sArgs::default());
    assert_eq!(K8sArgs::parse(";;").unwrap(), K8sArgs::default());
    let args = K8sArgs::parse("K8S_POD_NAME=a=b;K8S_POD_NAMESPACE=").unwrap();
    assert_eq!(args.pod_name.as_deref(), Some("a=b"));
    assert_eq!(args.pod_namespace, None);
    assert_eq!(args.pod(), None);
    assert_eq!(
        K8sArgs::parse("K8S_POD_NAME=a;garbage").unwrap_err(),
        ArgsError::MalformedArgs {
            pair: "garbage".into()
        }
    );
}

#[test]
fn commands() {
    for (s, c) in [
        ("ADD", Command::Add),
        ("DEL", Command::Del),
        ("CHECK", Command::Check),
        ("VERSION", Command::Version),
        ("STATUS", Command::Status),
        ("GC", Command::Gc),
    ] {
        assert_eq!(Command::parse(s).unwrap(), c);
        assert_eq!(c.to_string(), s);
    }
    assert_eq!(
        Command::parse("add").unwrap_err(),
        ArgsError::UnknownCommand("add".into())
    );
}

#[test]
fn invocation_from_env() {
    let inv = Invocation::from_env(env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=app;K8S_POD_NAME=web"),
    ]))
    .unwrap();
    assert_eq!(inv.command, Command::Add);
    assert_eq!(
        inv.add_params().unwrap(),
        AddParams {
            container_id: "c1",
            netns: "/var/run/netns/x",
            ifname: "eth0"
        }
    );
    assert_eq!(inv.k8s().unwrap().pod(), Some(("app", "web")));
}

#[test]
fn missing_variables_are_named() {
    assert_eq!(
        Invocation::from_env(env(&[])).unwrap_err(),
        ArgsError::MissingCommand
    );
    assert_eq!(
        Invocation::from_env(env(&[("CNI_COMMAND", "")])).unwrap_err(),
        ArgsError::MissingCommand
    );
    let inv = Invocation::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")])).unwrap();
    let err = inv.add_params().unwrap_err();
    assert_eq!(
        err,
        ArgsError::Missing(vec!["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
    );
    assert_eq!(
        err.to_string(),
        "required environment variables missing: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME"
    );
}

#[test]
fn bad_cni_args_fail_only_when_read() {
    let inv = Invocation::from_env(env(&[("CNI_COMMAND", "DEL"), ("CNI_ARGS", "x")])).unwrap();
    assert!(matches!(
        inv.k8s().unwrap_err(),
        ArgsError::MalformedArgs { .. }
    ));
}
