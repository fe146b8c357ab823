//! The client against a real hyper server on a real Unix socket.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use super::*;

fn event() -> PluginEvent {
    PluginEvent {
        netns: "/var/run/netns/cni-1".into(),
        pod_name: "web".into(),
        pod_namespace: "app".into(),
        ips: vec![EventIp {
            interface: Some(2),
            address: IpNet::cidr("10.0.0.5".parse().unwrap(), 24).unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
        }],
    }
}

type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Serves `status` + `body` on `<dir>/pluginevent.sock`, recording method, path and body.
fn serve(dir: &Path, status: u16, body: &'static str) -> Seen {
    let listener = UnixListener::bind(socket_path(dir)).unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let bytes = req.into_body().collect().await?.to_bytes().to_vec();
                        record.lock().unwrap().push((method, path, bytes));
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    seen
}

#[tokio::test]
async fn ok_posts_the_event_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let seen = serve(dir.path(), 200, "");
    send_add(dir.path(), &event()).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (method, path, body) = &seen[0];
    assert_eq!(method, "POST");
    assert_eq!(path, "/cmdadd");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"Netns": "/var/run/netns/cni-1", "PodName": "web",
                           "PodNamespace": "app",
                           "IPs": [{"Interface": 2,
                                    "Address": {"IP": "10.0.0.5", "Mask": "////AA=="},
                                    "Gateway": "10.0.0.1"}]})
    );
}

#[tokio::test]
async fn non_200_carries_status_and_body() {
    for status in [400u16, 500] {
        let dir = tempfile::tempdir().unwrap();
        serve(dir.path(), status, "enrollment failed: no netns\n");
        let err = send_add(dir.path(), &event()).await.unwrap_err();
        match &err {
            EventError::Rejected {
                status: s, body, ..
            } => {
                assert_eq!(s.as_u16(), status);
                assert_eq!(body, "enrollment failed: no netns");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_transient());
        assert!(err.to_string().contains("pluginevent.sock"), "{err}");
    }
}

#[tokio::test]
async fn missing_socket_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = send_add(dir.path(), &event()).await.unwrap_err();
    assert!(matches!(err, EventError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    let want = socket_path(dir.path()).display().to_string();
    assert!(err.to_string().contains(&want), "{err}");
}

#[tokio::test]
async fn silent_agent_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections but never answers.
    let listener = UnixListener::bind(socket_path(dir.path())).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            conns.push(s);
        }
    });
    let err = send_add_within(dir.path(), &event(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, EventError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    held.abort();
}
