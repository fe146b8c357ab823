use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::serve;

/// Each connection gets its own handler call; the handler here answers on a spawned task.
#[tokio::test]
async fn serves_every_tcp_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        "test tcp",
        |mut stream: TcpStream, peer| {
            tokio::spawn(async move {
                let reply = format!("{}\n", peer.ip());
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        },
    ));
    for _ in 0..3 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut reply))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(reply, "127.0.0.1\n");
    }
    server.abort();
}

#[tokio::test]
async fn serves_unix_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(serve(listener, "test unix", |mut stream: UnixStream, _| {
        tokio::spawn(async move {
            let _ = stream.write_all(b"hi").await;
        });
    }));
    let mut client = UnixStream::connect(&path).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut reply))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(reply, b"hi");
    server.abort();
}
