use super::*;
use std::future::poll_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A relay between two real TCP connections: client <-> [relay] <-> server.
async fn relay() -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<Result<Transferred, CopyError>>,
) {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (mut relay_front, _) = front.accept().await.unwrap();
    let mut relay_back = TcpStream::connect(back.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = back.accept().await.unwrap();
    let task =
        tokio::spawn(async move { copy_bidirectional(&mut relay_front, &mut relay_back).await });
    (client, server, task)
}

#[tokio::test]
async fn moves_bulk_data_exactly_both_ways() {
    let (mut client, mut server, task) = relay().await;
    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let down: Vec<u8> = (0..1_000_003u32).map(|i| (i * 13) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let server_task = tokio::spawn(async move {
        let (mut r, mut w) = server.split();
        let send = async {
            w.write_all(&down2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert!(got == up2, "server received different bytes");
    });
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert!(got == down, "client received different bytes");
    server_task.await.unwrap();
    let moved = task.await.unwrap().unwrap();
    assert_eq!(moved.a_to_b, up.len() as u64);
    assert_eq!(moved.b_to_a, down.len() as u64);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let (mut client, mut server, task) = relay().await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap(); // FIN towards the server only
    let mut req = Vec::new();
    server.read_to_end(&mut req).await.unwrap(); // the FIN arrived through the relay
    assert_eq!(req, b"request");
    // The server answers after the client stopped sending.
    server.write_all(b"response after EOF").await.unwrap();
    server.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"response after EOF");
    let moved = task.await.unwrap().unwrap();
    assert_eq!(
        moved,
        Transferred {
            a_to_b: 7,
            b_to_a: 18
        }
    );
}

/// Reads grow while they fill (bulk) up to the cap and stay small for small messages; no read
/// is made, and no buffer exists, before the socket is readable.
#[tokio::test]
async fn reads_grow_only_under_bulk_traffic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut writer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut reader, _) = listener.accept().await.unwrap();
    let (mut source, _) = reader.halves();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(
        source.poll_chunk(&mut cx).is_pending(),
        "nothing was sent yet"
    );
    assert_eq!(source.read_size, INITIAL_READ);
    assert_eq!(source.buf.capacity(), 0, "a buffer before anything arrived");

    writer.write_all(b"tiny").await.unwrap();
    let chunk = poll_fn(|cx| source.poll_chunk(cx)).await.unwrap().unwrap();
    assert_eq!(&chunk[..], b"tiny");
    assert_eq!(source.read_size, INITIAL_READ);
    // Drained at the smallest read size: the next poll finds nothing and lets the buffer go
    // (the chunk handed out keeps only its own allocation alive).
    assert!(source.poll_chunk(&mut cx).is_pending());
    assert_eq!(
        source.buf.capacity(),
        0,
        "an idle connection kept its buffer"
    );
    drop(chunk);

    let bulk = vec![7u8; 16 * MAX_READ];
    let sent = bulk.len();
    let send = tokio::spawn(async move { writer.write_all(&bulk).await.map(|()| writer) });
    let mut largest = 0;
    let mut got = 0;
    while got < sent {
        let chunk = poll_fn(|cx| source.poll_chunk(cx)).await.unwrap().unwrap();
        largest = largest.max(chunk.len());
        got += chunk.len();
    }
    let _writer = send.await.unwrap().unwrap();
    assert_eq!(got, sent);
    assert!(
        largest > INITIAL_READ && largest <= MAX_READ,
        "largest read {largest} bytes"
    );
}

/// A copy told to stop returns with the reason and the bytes moved so far, leaving both
/// connections open for the caller to close.
#[tokio::test]
async fn a_stopped_copy_reports_what_it_moved() {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (mut relay_front, _) = front.accept().await.unwrap();
    let mut relay_back = TcpStream::connect(back.local_addr().unwrap())
        .await
        .unwrap();
    let (mut server, _) = back.accept().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<&'static str>();
    let task = tokio::spawn(async move {
        let ended = copy_bidirectional_until(&mut relay_front, &mut relay_back, stopped).await;
        (ended, relay_front, relay_back)
    });

    client.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).await.unwrap();
    server.write_all(b"hi").await.unwrap();
    client.read_exact(&mut got[..2]).await.unwrap();
    stop.send("revoked").unwrap();
    // Both ends go away too: a copy that ignored the stop would end on their EOFs instead.
    drop((client, server));
    let (ended, _front, _back) = task.await.unwrap();
    match ended {
        Ended::Stopped(Ok(why), moved) => {
            assert_eq!(why, "revoked");
            assert_eq!(
                moved,
                Transferred {
                    a_to_b: 5,
                    b_to_a: 2
                }
            );
        }
        other => panic!("expected a stopped copy, got {other:?}"),
    }
}
