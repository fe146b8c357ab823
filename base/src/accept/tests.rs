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

/// With `limit` connections held, the next one is closed at once; once one of them ends, a
/// new connection is served again.
#[tokio::test]
async fn serve_limited_closes_connections_beyond_the_cap() {
    use super::serve_limited;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_limited(
        listener,
        "test capped",
        2,
        |mut stream: TcpStream, _, slot| {
            tokio::spawn(async move {
                let _slot = slot;
                let _ = stream.write_all(b"served\n").await;
                // Hold the connection until the client closes it.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        },
    ));
    let greeting = |mut c: TcpStream| async move {
        let mut buf = [0u8; 7];
        let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("an answer or a close in time")
            .unwrap();
        (c, got)
    };
    let (first, n1) = greeting(TcpStream::connect(addr).await.unwrap()).await;
    let (_second, n2) = greeting(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!((n1, n2), (7, 7));
    let (_third, n3) = greeting(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(n3, 0, "the third connection must be closed unserved");
    drop(first);
    // The freed place is taken by the next connection (once the server saw the close).
    let mut served = false;
    for _ in 0..100 {
        let (_c, n) = greeting(TcpStream::connect(addr).await.unwrap()).await;
        if n == 7 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a freed place was never reused");
    server.abort();
}
