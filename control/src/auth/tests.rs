//! Tokens as callers see them: who a token names, rotation, rebinding, refusal reasons and a
//! broken file. The line format itself is tested in `token_file/tests.rs`; client certificates
//! need a real TLS connection and are covered in `control/tests/ca_grpc.rs`.

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

fn token(label: &str, node: &str) -> Caller {
    Caller::Token {
        label: label.into(),
        node: node.into(),
    }
}

/// Rewrites `path` in place and moves its mtime, so the change shows even on a filesystem with
/// coarse timestamps.
fn rewrite(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    let later = SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(later)
        .unwrap();
}

#[test]
fn a_token_names_its_label_and_node() {
    let (_dir, _, auth) = with_tokens(
        "# node tunnels\n\n  tok-a node=node-1  on rack 3\ntok-b node=node-2\n\t# indented comment\ntok-c node=node-3 n3\n",
    );
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok-a"))).unwrap(),
        token("on rack 3", "node-1")
    );
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok-b"))).unwrap(),
        token("line 4", "node-2")
    );
    // The scheme is case-insensitive (RFC 6750).
    assert_eq!(
        auth.authenticate(&request(Some("bearer tok-c"))).unwrap(),
        token("n3", "node-3")
    );
    // Comments, nodes and labels are not tokens; prefixes and extensions of tokens are not either.
    for wrong in ["#", "node=node-3", "n3", "tok", "tok-aa"] {
        let status = refusal(&auth, Some(&format!("Bearer {wrong}")));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong}");
    }
}

#[test]
fn refusals_name_the_cause() {
    let (_dir, _, auth) = with_tokens("secret-token node=n1 label\n");
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
    let (dir, path, auth) = with_tokens("old-token node=n1\n");
    assert!(auth
        .authenticate(&request(Some("Bearer old-token")))
        .is_ok());

    // Rewritten in place (same length, so only the mtime or content differs).
    rewrite(&path, "new-token node=n1\n");
    assert!(auth
        .authenticate(&request(Some("Bearer new-token")))
        .is_ok());
    assert_eq!(
        refusal(&auth, Some("Bearer old-token")).message(),
        "bearer token not accepted"
    );

    // Replaced by rename, as Kubernetes updates mounted secrets.
    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, "newer-token node=n1\n").unwrap();
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
    let (_dir, path, auth) = with_tokens("tok node=n1\n");
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
    std::fs::write(&path, "tok node=n1\n").unwrap();
    assert!(auth.authenticate(&request(Some("Bearer tok"))).is_ok());
}

#[test]
fn a_rewrite_that_rebinds_a_token_moves_it_to_the_new_node() {
    let (_dir, path, auth) = with_tokens("tok node=n1 tunnel\n");
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok"))).unwrap(),
        token("tunnel", "n1")
    );
    rewrite(&path, "tok node=n2 tunnel\n");
    assert_eq!(
        auth.authenticate(&request(Some("Bearer tok"))).unwrap(),
        token("tunnel", "n2")
    );
}

#[test]
fn a_token_file_that_does_not_load_refuses_every_token_until_fixed() {
    let (_dir, path, auth) = with_tokens("good node=n1\n");
    assert!(auth.authenticate(&request(Some("Bearer good"))).is_ok());

    // One bad line: nothing from this version is used, and nothing from the last good one
    // either (the edit may have revoked `good`).
    rewrite(&path, "good node=n1\nrevoked-old-style\n");
    for presented in ["Bearer good", "Bearer revoked-old-style"] {
        let status = refusal(&auth, Some(presented));
        assert_eq!(status.code(), tonic::Code::Unavailable, "{presented}");
        assert_eq!(
            status.message(),
            "the control plane's token file does not load; try again later"
        );
    }
    match auth.check_token_file() {
        Err(TokensError::Malformed(e)) => {
            assert_eq!(e.lines, vec![(2, LineError::NoNode)]);
            assert!(
                e.to_string().contains(&format!("{}:2:", path.display())),
                "{e}"
            );
        }
        other => panic!("expected a malformed file, got {other:?}"),
    }

    rewrite(&path, "good node=n1\nnew node=n2\n");
    assert_eq!(auth.check_token_file().unwrap(), Some(2));
    assert_eq!(
        auth.authenticate(&request(Some("Bearer new"))).unwrap(),
        token("line 2", "n2")
    );
}

#[test]
fn check_token_file_reports_a_missing_file_and_no_file() {
    let (_dir, path, auth) = with_tokens("tok node=n1\n");
    assert_eq!(auth.check_token_file().unwrap(), Some(1));
    std::fs::remove_file(&path).unwrap();
    let err = auth.check_token_file().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot read the token file {}", path.display())),
        "{err}"
    );
    assert_eq!(
        Authenticator::new(None, true).check_token_file().unwrap(),
        None
    );
}

#[test]
fn token_values_never_show_in_debug_output() {
    let (_dir, _, auth) = with_tokens("super-secret-value node=n1\n");
    assert!(auth
        .authenticate(&request(Some("Bearer super-secret-value")))
        .is_ok());
    let debug = format!("{auth:?}");
    assert!(!debug.contains("super-secret-value"), "{debug}");
    let refused = refusal(&auth, Some("Bearer guessed-secret"));
    assert!(!refused.message().contains("guessed-secret"));
}
