//! `serve` over real loopback TCP (no TLS: the bounds are HTTP/2's), with an h2 client: the
//! handshake deadline, the idle timeout, the keepalive PINGs and the HTTP/2 limits.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::hbone::test_relay::Relay;

/// Bounds every wait: a feature that is missing makes the test fail here instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

fn options(idle: Duration, ping: PingConfig) -> ServeOptions {
    ServeOptions {
        handshake_deadline: tokio::time::Instant::now() + Duration::from_millis(300),
        idle_timeout: idle,
        ping,
    }
}

/// PINGs rare enough not to matter.
fn no_pings() -> PingConfig {
    PingConfig {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
    }
}

/// A listener whose first connection is served with `serve(options)`: each stream is
/// answered 200 and held until `hold` is notified; counts the streams handled. The join
/// handle yields `serve`'s result.
async fn server(
    options: ServeOptions,
    hold: Arc<tokio::sync::Notify>,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(
            tcp,
            move |incoming| {
                count.fetch_add(1, Ordering::SeqCst);
                let hold = hold.clone();
                async move {
                    let _stream = incoming.accept();
                    hold.notified().await;
                }
            },
            std::future::pending(),
            options,
        )
        .await
    });
    (addr, handled, task)
}

async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

fn connect_request(extra_header: Option<usize>) -> Request<()> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80");
    if let Some(len) = extra_header {
        request = request.header("x-padding", "a".repeat(len));
    }
    request.body(()).unwrap()
}

#[tokio::test]
async fn a_silent_client_is_closed_at_the_handshake_deadline() {
    let (addr, _, served) = server(
        options(Duration::from_secs(3600), no_pings()),
        Default::default(),
    )
    .await;
    // Connects and says nothing: no preface ever comes.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let result = tokio::time::timeout(BOUND, served)
        .await
        .expect("still waiting");
    assert!(matches!(result.unwrap(), Err(ServeError::HandshakeTimeout)));
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_when_idle_and_one_with_a_stream_is_kept() {
    let idle = Duration::from_millis(300);
    let hold = Arc::new(tokio::sync::Notify::new());
    let (addr, handled, served) = server(options(idle, no_pings()), hold.clone()).await;
    let (mut send, connection) = h2_client(addr).await;
    send = send.ready().await.unwrap();
    let (response, _body) = send.send_request(connect_request(None), false).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    // Several idle timeouts pass with the stream open: the connection stays.
    tokio::time::sleep(idle * 4).await;
    assert!(!served.is_finished(), "closed while a stream was open");
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    // The stream ends; with none left the connection is closed (GOAWAY) after the timeout.
    hold.notify_waiters();
    let result = tokio::time::timeout(BOUND, served)
        .await
        .expect("never closed");
    assert!(result.unwrap().is_ok());
    let ended = tokio::time::timeout(BOUND, connection)
        .await
        .expect("client never saw the close");
    assert!(ended.unwrap().is_ok());
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let ping = PingConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let (addr, _, served) =
        server(options(Duration::from_secs(3600), ping), Default::default()).await;
    let relay = Relay::start(addr).await;
    let (_send, _connection) = h2_client(relay.addr).await;
    // A few PING rounds are answered: the connection stays up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!served.is_finished(), "closed while the peer answered");
    relay.freeze();
    let result = tokio::time::timeout(BOUND, served)
        .await
        .expect("kept a vanished peer");
    assert!(matches!(result.unwrap(), Err(ServeError::PeerGone(_))));
}

#[tokio::test]
async fn streams_and_headers_are_bounded() {
    let hold = Arc::new(tokio::sync::Notify::new());
    let (addr, handled, _served) =
        server(options(Duration::from_secs(3600), no_pings()), hold.clone()).await;
    let (mut send, _connection) = h2_client(addr).await;
    send = send.ready().await.unwrap();
    let (response, _body) = send.send_request(connect_request(None), false).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    // The server's SETTINGS have arrived with the answer.
    assert_eq!(send.current_max_send_streams(), 200);
    // A request whose headers exceed 64 KiB never reaches the handler.
    send = send.ready().await.unwrap();
    let (response, _body) = send
        .send_request(connect_request(Some(70 * 1024)), false)
        .unwrap();
    let refused = tokio::time::timeout(BOUND, response)
        .await
        .expect("no answer");
    match refused {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}
