//! Token parsing, rotation and refusal reasons. Client certificates need a real TLS
//! connection and are covered in `control/tests/ca_grpc.rs`.

use super::*;

fn request(authorization: Option<&str>) -> tonic::Request<()> {
    let mut request = tonic::Request::new(());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

fn with_tokens(contents: &str) -> (tempfile::TempDir, PathBuf, Authenticator) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, contents).unwrap();
    let auth = Authenticator::new(Some(path.clone()), true);
    (dir, path, auth)
}

fn refusal(auth: &Authenticator, authorization: Option<&str>) -> Status {
    auth.authenticate(&request(authorization))
        .expect_err("should be refused")
}

#[test]
fn token_file_lines_labels_and_comments() {
    let (_dir, _, auth) = with_tokens(
        "# node tunnels\n\n  tok-a   node-1 on rack 3\ntok-b\n\t# indented comment\ntok-c node-3\n",
    );
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok-a"))).unwrap(),
        Caller::Token {
            label: "node-1 on rack 3".into()
        }
    );
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok-b"))).unwrap(),
        Caller::Token {
            label: "line 4".into()
        }
    );
    // The scheme is case-insensitive (RFC 6750).
    assert_eq!(
        auth.authenticate(&request(Some("bearer tok-c"))).unwrap(),
        Caller::Token {
            label: "node-3".into()
        }
    );
    // Comments and labels are not tokens; prefixes and extensions of tokens are not either.
    for wrong in ["# node tunnels", "node-3", "tok", "tok-aa", "tok-a node-1"] {
        let status = refusal(&auth, Some(&format!("Bearer {wrong}")));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong}");
    }
}

#[test]
fn refusals_name_the_cause() {
    let (_dir, _, auth) = with_tokens("secret-token label\n");
    let status = refusal(&auth, None);
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "no bearer token and no client certificate presented"
    );

    let status = refusal(&auth, Some("Bearer other-token"));
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "bearer token not accepted");

    for malformed in [
        "secret-token",
        "Basic secret-token",
        "Bearer ",
        "Bearer a b",
    ] {
        let status = refusal(&auth, Some(malformed));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{malformed}");
        assert_eq!(
            status.message(),
            "malformed authorization header (expected `Bearer <token>`)",
            "{malformed}"
        );
    }
}

#[test]
fn without_a_token_file_no_token_is_accepted() {
    let auth = Authenticator::new(None, true);
    let status = refusal(&auth, Some("Bearer anything"));
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("bearer token not accepted"),
        "{}",
        status.message()
    );
}

#[test]
fn tokens_rotate_without_restart() {
    let (dir, path, auth) = with_tokens("old-token node\n");
    assert!(auth
        .authenticate(&request(Some("Bearer old-token")))
        .is_ok());

    // Rewritten in place (same length, so only the mtime or content differs).
    std::fs::write(&path, "new-token node\n").unwrap();
    // mtime resolution may be coarse; make the change visible regardless.
    let later = SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(auth
        .authenticate(&request(Some("Bearer new-token")))
        .is_ok());
    assert_eq!(
        refusal(&auth, Some("Bearer old-token")).message(),
        "bearer token not accepted"
    );

    // Replaced by rename, as Kubernetes updates mounted secrets.
    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, "newer-token node\n").unwrap();
    std::fs::rename(&staged, &path).unwrap();
    assert!(auth
        .authenticate(&request(Some("Bearer newer-token")))
        .is_ok());
    assert!(auth
        .authenticate(&request(Some("Bearer new-token")))
        .is_err());
}

#[test]
fn unreadable_token_file_is_unavailable_not_a_stale_accept() {
    let (_dir, path, auth) = with_tokens("tok node\n");
    assert!(auth.authenticate(&request(Some("Bearer tok"))).is_ok());
    std::fs::remove_file(&path).unwrap();
    let status = refusal(&auth, Some("Bearer tok"));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        !status.message().contains(path.to_str().unwrap()),
        "the caller is not told where our secrets live: {}",
        status.message()
    );
    // Back again: accepted again.
    std::fs::write(&path, "tok node\n").unwrap();
    assert!(auth.authenticate(&request(Some("Bearer tok"))).is_ok());
}

#[test]
fn token_values_never_show_in_debug_output() {
    let (_dir, _, auth) = with_tokens("super-secret-value node\n");
    assert!(auth
        .authenticate(&request(Some("Bearer super-secret-value")))
        .is_ok());
    let debug = format!("{auth:?}");
    assert!(!debug.contains("super-secret-value"), "{debug}");
    let refused = refusal(&auth, Some("Bearer guessed-secret"));
    assert!(!refused.message().contains("guessed-secret"));
}

#[test]
fn constant_time_eq_is_equality() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(constant_time_eq(b"", b""));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"ab", b"abc"));
    // A zero byte does not stand in for a missing one.
    assert!(!constant_time_eq(b"ab\0", b"ab"));
}
