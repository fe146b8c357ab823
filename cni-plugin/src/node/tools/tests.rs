use super::*;
use std::path::Path;

#[test]
fn failure_names_program_place_exit_code_and_stderr() {
    let err = run(
        Path::new("sh"),
        &["-c", "echo 'bad rule' >&2; exit 2"],
        None,
        &in_netns(Path::new("/proc/123/ns/net")),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sh in netns /proc/123/ns/net failed (exit 2): bad rule"
    );
}

#[test]
fn stdin_is_fed_and_stdout_returned() {
    let out = run(Path::new("cat"), &[], Some("*nat\nCOMMIT\n"), "here").unwrap();
    assert_eq!(out, "*nat\nCOMMIT\n");
}

#[test]
fn missing_binary_is_a_spawn_error() {
    let err = run(
        Path::new("/nonexistent/iptables-restore"),
        &[],
        None,
        "here",
    )
    .unwrap_err();
    assert!(matches!(err.problem, ToolProblem::Spawn(_)), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("/nonexistent/iptables-restore in here could not run"));
}
