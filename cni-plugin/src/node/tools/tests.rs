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

#[test]
fn a_tool_that_fails_before_reading_its_input_is_reported_by_its_exit_and_stderr() {
    // More than a pipe buffer, so the write cannot finish before the tool exits: the pipe
    // breaks every time. The failure is still the tool's own, with its stderr.
    let input = "x".repeat(1 << 20);
    let err = run(
        Path::new("sh"),
        &["-c", "echo 'broken on purpose' >&2; exit 1"],
        Some(&input),
        "here",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sh in here failed (exit 1): broken on purpose"
    );
}

#[test]
fn a_tool_that_succeeds_without_reading_its_input_is_an_error() {
    let input = "x".repeat(1 << 20);
    let err = run(Path::new("true"), &[], Some(&input), "here").unwrap_err();
    assert!(matches!(err.problem, ToolProblem::Spawn(_)), "{err:?}");
}
