//! The token file's line format: good lines, each kind of bad line, the old format, and that
//! nothing a bad line holds is echoed.

use super::*;

fn path() -> &'static Path {
    Path::new("/etc/nodetunnel/tokens")
}

fn parse(text: &str) -> Result<TokenFile, TokenFileError> {
    TokenFile::parse(text, path())
}

fn binding(node: &str, label: &str) -> Binding {
    Binding {
        node: node.into(),
        label: label.into(),
    }
}

#[test]
fn good_lines_bind_tokens_to_nodes_with_labels() {
    let file = parse(
        "# node tunnels\n\n  tok-a   node=worker-1   tunnel on  rack 3\ntok-b node=worker-2\n\
         \t# indented comment\ntok-c\tnode=worker-1.example.com x\n",
    )
    .unwrap();
    assert_eq!(file.len(), 3);
    assert_eq!(
        file.find(b"tok-a"),
        Some(&binding("worker-1", "tunnel on rack 3"))
    );
    // No label: named by its line.
    assert_eq!(file.find(b"tok-b"), Some(&binding("worker-2", "line 4")));
    assert_eq!(
        file.find(b"tok-c"),
        Some(&binding("worker-1.example.com", "x"))
    );
    // Comments, labels, node fields, prefixes and extensions of tokens are not tokens.
    for wrong in [
        "# node tunnels",
        "node=worker-1",
        "worker-1",
        "tok",
        "tok-aa",
        "tok-a node=worker-1",
        "",
    ] {
        assert_eq!(file.find(wrong.as_bytes()), None, "{wrong:?}");
    }
}

#[test]
fn an_empty_file_accepts_nothing() {
    for text in ["", "\n\n", "# nothing yet\n"] {
        let file = parse(text).unwrap();
        assert_eq!(file.len(), 0);
        assert_eq!(file.find(b""), None);
        assert_eq!(file.find(b"anything"), None);
    }
}

#[test]
fn the_format_before_node_binding_is_refused_with_the_fix() {
    for old in ["old-token\n", "old-token node-1 on rack 3\n"] {
        let err = parse(old).unwrap_err();
        assert_eq!(err.lines, vec![(1, LineError::NoNode)], "{old:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("/etc/nodetunnel/tokens:1: the token names no node"),
            "{message}"
        );
        assert!(
            message.contains("`<token> node=<node-name> [label]`"),
            "{message}"
        );
        assert!(!message.contains("old-token"), "token echoed: {message}");
    }
}

#[test]
fn every_bad_line_is_named_with_its_reason_and_nothing_loads() {
    let text = "\
# header
good-1 node=n1
secret-1
secret-2 label node=n2
secret-3 node=
node=n3 label
good-2 node=n2 fine
good-1 node=n2
";
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.lines,
        vec![
            (3, LineError::NoNode),
            (4, LineError::NotANodeField),
            (5, LineError::EmptyNode),
            (6, LineError::MissingToken),
            (8, LineError::Duplicate { first: 2 }),
        ]
    );
    let message = err.to_string();
    for (line, fragment) in [
        (3, "the token names no node"),
        (4, "`node=<node-name>` must come right after the token"),
        (5, "`node=` is empty"),
        (6, "the line starts with `node=`: the token is missing"),
        (8, "the same token is on line 2"),
    ] {
        assert!(
            message.contains(&format!("/etc/nodetunnel/tokens:{line}: {fragment}")),
            "line {line}: {message}"
        );
    }
    for secret in ["secret-1", "secret-2", "secret-3", "good-1", "good-2"] {
        assert!(!message.contains(secret), "{secret} echoed: {message}");
    }
    assert!(!format!("{err:?}").contains("secret-"), "{err:?}");
}

#[test]
fn a_token_repeated_for_the_same_node_is_still_a_duplicate() {
    let err = parse("tok node=n1\n\ntok node=n1 again\n").unwrap_err();
    assert_eq!(err.lines, vec![(3, LineError::Duplicate { first: 1 })]);
}

#[test]
fn debug_output_holds_no_token_material() {
    let file = parse("super-secret-value node=n1 label\n").unwrap();
    let debug = format!("{file:?}");
    assert!(!debug.contains("super-secret-value"), "{debug}");
    let hex: String = digest(b"super-secret-value")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!debug.contains(&hex[..8]), "{debug}");
}

#[test]
fn matching_checks_every_token_and_picks_the_equal_one() {
    // Many tokens, the match anywhere: first, middle, last; lengths differing from the match
    // do not matter (digests are compared).
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!("token-{i:02}{} node=n{i}\n", "x".repeat(i)));
    }
    let file = parse(&text).unwrap();
    for i in [0usize, 25, 49] {
        let value = format!("token-{i:02}{}", "x".repeat(i));
        assert_eq!(
            file.find(value.as_bytes()).map(|b| b.node.as_str()),
            Some(format!("n{i}").as_str())
        );
    }
    assert_eq!(file.find(b"token-25"), None);
}
