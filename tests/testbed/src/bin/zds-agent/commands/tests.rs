use super::*;

const NETNS: &str = "/proc/self/ns/net";

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    }
}

#[test]
fn command_lines_parse() {
    let pod = |uid: &str, netns: &str, info: Option<WorkloadInfo>| {
        Some(Request::Add(Pod {
            uid: uid.into(),
            netns: netns.into(),
            info,
        }))
    };
    let cases: Vec<(&str, Option<Request>)> = vec![
        ("", None),
        ("   ", None),
        ("# a comment", None),
        ("add a /proc/self/ns/net", pod("a", NETNS, None)),
        ("add a ns-1", pod("a", "/run/netns/ns-1", None)),
        (
            "  add  b ./rel\tns/pod-b/sa ",
            pod("b", "./rel", Some(info("pod-b"))),
        ),
        ("del a", Some(Request::Del { uid: "a".into() })),
        ("list", Some(Request::List)),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), Ok(want), "{line:?}");
    }
}

#[test]
fn malformed_command_lines_are_usage_errors() {
    for line in ["add", "add a", "add a b c d", "del", "del a b", "list x"] {
        let err = parse(line).unwrap_err();
        assert!(matches!(err, UsageError::Arguments { .. }), "{line}: {err}");
    }
    for (line, want) in [
        ("frob a", UsageError::UnknownCommand("frob".into())),
        ("ADD a b", UsageError::UnknownCommand("ADD".into())),
        ("add a n ns/pod", UsageError::Info("ns/pod".into())),
        ("add a n ns//sa", UsageError::Info("ns//sa".into())),
        ("add a n a/b/c/d", UsageError::Info("a/b/c/d".into())),
        ("add a ..", UsageError::NetnsName("..".into())),
    ] {
        assert_eq!(parse(line), Err(want), "{line}");
    }
}
