//! The bounds of the agent's HTTP servers, on a real TCP listener.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn start() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, "test", |_req| async {
        text(StatusCode::OK, "ok\n")
    }));
    (addr, server)
}

/// A client that connects and never sends its request is closed after the header timeout,
/// not held forever; a client that does send one is answered.
#[tokio::test]
async fn a_silent_client_is_closed_after_the_header_read_timeout() {
    let (addr, server) = start().await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut polite = TcpStream::connect(addr).await.unwrap();
    polite
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    polite.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        HEADER_READ_TIMEOUT + Duration::from_secs(10),
        silent.read_to_end(&mut buf),
    )
    .await;
    assert!(closed.is_ok(), "the silent connection was never closed");
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT,
        "closed before the timeout"
    );
    server.abort();
}
