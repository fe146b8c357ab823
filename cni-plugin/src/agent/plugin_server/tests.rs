//! The event socket as the plugin meets it: a real Unix socket in a temp dir.

use std::os::unix::fs::MetadataExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;

/// The socket file is owner-only, a stale file is replaced, and a connection from this
/// process's own user is served (here: a malformed event gets its 400).
#[tokio::test]
async fn the_event_socket_is_owner_only_and_serves_its_own_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("pluginevent.sock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"stale").unwrap();
    let (inputs, _rx) = mpsc::channel(1);
    let serve = bind(&path, inputs, Arc::new(Metrics::default())).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let server = tokio::spawn(serve);

    let mut client = UnixStream::connect(&path).await.unwrap();
    let body = "not json";
    let request = format!(
        "POST {ADD_PATH} HTTP/1.1\r\nhost: agent\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    server.abort();
}
