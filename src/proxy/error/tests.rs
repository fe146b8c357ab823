use std::net::SocketAddr;

use http::{Method, Request};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::authz::{AllowReason, Decision};
use crate::hbone::server;
use crate::proxy::admit;

fn deny() -> Decision {
    Decision::Deny(DenyReason::DenyPolicy {
        policy: "default/deny-all".into(),
    })
}

#[test]
fn a_denial_is_a_401_flagged_policy_denied_with_its_reason() {
    let e = admit(deny()).unwrap_err();
    assert!(matches!(e, ProxyError::Denied(_)), "{e:?}");
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(e.flag(), "policy_denied");
    assert_eq!(e.response_flags(), "DENY", "ztunnel's metric label");
    assert_eq!(
        e.denial().map(ToString::to_string).as_deref(),
        Some("DENY policy default/deny-all matched")
    );
    assert_eq!(
        e.to_string(),
        "denied: DENY policy default/deny-all matched"
    );
}

#[test]
fn an_allow_goes_on_with_its_reason_and_other_errors_are_no_denial() {
    assert_eq!(
        admit(Decision::Allow(AllowReason::NoAllowPolicies)).unwrap(),
        AllowReason::NoAllowPolicies
    );
    let other = ProxyError::NotLocal {
        target: "10.0.0.1:80".parse().unwrap(),
    };
    assert!(other.denial().is_none());
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
}

/// Over a real HTTP/2 connection (loopback, no TLS: the refusal does not depend on it): a
/// stream whose decision is a denial is answered 401 the way inbound answers it, and the same
/// connection then carries an allowed stream.
#[tokio::test]
async fn a_denied_stream_is_refused_with_401_and_the_connection_stays_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Port 1 stands for a connection the policy denies.
        let handle = |incoming: server::IncomingStream| async move {
            let decision = match incoming.target() {
                Ok(t) if t.addr().is_some_and(|a| a.port() == 1) => deny(),
                _ => Decision::Allow(AllowReason::NoAllowPolicies),
            };
            match admit(decision) {
                Err(e) => incoming.refuse(e.status()),
                Ok(_) => drop(incoming.accept()),
            }
        };
        let options = server::ServeOptions {
            handshake_deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(600),
            ping: crate::config::PingConfig::default(),
        };
        let _ = server::serve(tcp, handle, std::future::pending(), options).await;
    });

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let connect = |target: SocketAddr| {
        let send = send.clone();
        async move {
            let mut send = send.ready().await.unwrap();
            let request = Request::builder()
                .method(Method::CONNECT)
                .uri(target.to_string())
                .body(())
                .unwrap();
            let (response, _stream) = send.send_request(request, false).unwrap();
            response.await.unwrap().status()
        }
    };
    assert_eq!(
        connect("10.0.0.1:1".parse().unwrap()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        connect("10.0.0.1:80".parse().unwrap()).await,
        StatusCode::OK,
        "the connection must keep serving after a denied stream"
    );
}

#[test]
fn a_revoked_live_connection_is_flagged_policy_revoked_and_is_no_refusal() {
    let reason = DenyReason::DenyPolicy {
        policy: "default/deny-all".into(),
    };
    let e = ProxyError::PolicyRevoked(reason.clone());
    assert_eq!(e.flag(), "policy_revoked");
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        e.denial(),
        Some(&reason),
        "the log names the deciding policy"
    );
    assert_eq!(e.refusal(), None, "admitted first: not counted as refused");
    assert_eq!(
        e.to_string(),
        "closed: the changed policies deny it: DENY policy default/deny-all matched"
    );
    assert_eq!(ProxyError::Denied(reason.clone()).refusal(), Some(&reason));
}

#[test]
fn metric_response_flags_use_ztunnels_vocabulary() {
    let io = || std::io::Error::other("x");
    let cases: Vec<(ProxyError, &str)> = vec![
        (ProxyError::InboundTls(io()), "TLS_FAILURE"),
        (
            ProxyError::UpstreamTimeout("10.0.0.1:80".parse().unwrap()),
            "CONNECT",
        ),
        (
            ProxyError::NotLocal {
                target: "10.0.0.1:80".parse().unwrap(),
            },
            "CONNECT",
        ),
    ];
    for (e, want) in cases {
        assert_eq!(e.response_flags(), want, "{e:?}");
        assert_ne!(e.response_flags(), "-", "an error is never a success");
    }
}
