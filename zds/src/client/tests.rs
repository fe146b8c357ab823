//! Both ends over a real SOCK_SEQPACKET socket in a temp dir, with real descriptors.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;

use nodetunnel_proto::istio::zds::{AddWorkload, DelWorkload, KeepWorkload, SnapshotSent};

use super::*;
use crate::seqpacket::SeqPacketListener;
use crate::server::{Ack as AgentAck, ZdsPeer, ZdsServer, ZdsServerError};
use nodetunnel_base::netns::NetnsId;

struct Setup {
    _dir: tempfile::TempDir,
    server: ZdsServer,
    peer: ZdsPeer,
    conn: ZdsConnection,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ZdsServer::bind(dir.path().join("zds.sock")).unwrap();
    let (peer, conn) = tokio::join!(server.accept(), ZdsClient::connect(server.path()));
    Setup {
        _dir: dir,
        server,
        peer: peer.unwrap(),
        conn: conn.unwrap(),
    }
}

/// The tunnel's loop body: read one event, ack it (an error ack for `Invalid`).
async fn answer(conn: &mut ZdsConnection) -> WorkloadEvent {
    let event = conn.next().await.unwrap().expect("an event");
    let error = match &event {
        WorkloadEvent::Invalid(v) => Some(v.to_string()),
        _ => None,
    };
    conn.ack(error).await.unwrap();
    event
}

/// What prost says about these bytes: the violation must carry exactly that decode error.
fn decode_error(bytes: &[u8]) -> DecodeError {
    WorkloadRequest::decode(bytes).unwrap_err()
}

fn request(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

fn add(uid: &str) -> Vec<u8> {
    let uid = uid.to_owned();
    request(Payload::Add(AddWorkload {
        uid,
        workload_info: None,
    }))
}

fn keep(uid: &str) -> Vec<u8> {
    request(Payload::Keep(KeepWorkload { uid: uid.into() }))
}

fn del(uid: &str) -> Vec<u8> {
    request(Payload::Del(DelWorkload { uid: uid.into() }))
}

/// Open descriptors in this process that refer to the file `id`.
fn open_count(id: NetnsId) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| NetnsId::new(m.dev(), m.ino()) == id)
        .count()
}

/// One bad request per protocol rule: bytes, descriptors attached, expected violation.
fn bad_requests() -> Vec<(Vec<u8>, usize, ProtocolViolation)> {
    use ProtocolViolation as V;
    let snapshot = request(Payload::SnapshotSent(SnapshotSent {}));
    let (kind, uid) = (|k| V::EmptyUid { kind: k }, String::from("a"));
    vec![
        (
            keep("a"),
            1,
            V::UnexpectedFds {
                kind: "keep",
                count: 1,
            },
        ),
        (
            del("a"),
            2,
            V::UnexpectedFds {
                kind: "del",
                count: 2,
            },
        ),
        (
            snapshot,
            1,
            V::UnexpectedFds {
                kind: "snapshot-sent",
                count: 1,
            },
        ),
        (add("a"), 0, V::MissingNetns { uid: uid.clone() }),
        (
            add("a"),
            3,
            V::TooManyFds {
                uid: uid.clone(),
                count: 3,
            },
        ),
        // SCM_MAX_FD, the most one message can carry.
        (add("a"), 253, V::TooManyFds { uid, count: 253 }),
        (vec![0xFF], 1, V::Malformed(decode_error(&[0xFF]))),
        (
            vec![0x0A, 0x02, 0x08, 0x01],
            1,
            V::Malformed(decode_error(&[0x0A, 0x02, 0x08, 0x01])),
        ),
        (add(""), 1, kind("add")),
        (keep(""), 0, kind("keep")),
        (del(""), 0, kind("del")),
        (vec![0x62, 0x00], 1, V::NoPayload),
        (vec![0x0A; RECV_BUFFER + 4096], 1, V::Truncated),
    ]
}

#[tokio::test]
async fn hello_is_the_first_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (accepted, conn) = tokio::join!(listener.accept(), ZdsClient::connect(&path));
    let (mut agent, _conn) = (accepted.unwrap(), conn.unwrap());
    let mut buf = [0u8; 64];
    let d = agent.recv(&mut buf).await.unwrap().unwrap();
    // ZdsHello{version: V1}: field 1, varint 1.
    assert_eq!(&buf[..d.len], [0x08, 0x01]);
    assert!(d.fds.is_empty() && !d.truncated);
}

#[tokio::test]
async fn agent_rejects_a_bad_hello_and_keeps_listening() {
    let dir = tempfile::tempdir().unwrap();
    let server = ZdsServer::bind(dir.path().join("zds.sock")).unwrap();
    for hello in [&[0x08, 0x02][..], &[0x08, 0x00], &[0xFF]] {
        let raw = SeqPacket::connect(server.path()).unwrap();
        raw.send(hello, &[]).await.unwrap();
        let err = server.accept().await.unwrap_err();
        assert!(
            matches!(err, ZdsServerError::BadHello(_)),
            "{hello:?}: {err}"
        );
    }
    let (peer, conn) = tokio::join!(server.accept(), ZdsClient::connect(server.path()));
    peer.unwrap();
    conn.unwrap();
}

#[tokio::test]
async fn add_delivers_the_netns_descriptor() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    let netns = File::open("/proc/self/ns/net").unwrap();
    let info = WorkloadInfo {
        name: "pod-1".into(),
        namespace: "ns-1".into(),
        service_account: "sa-1".into(),
    };
    let (ack, event) = tokio::join!(
        peer.add("uid-1", Some(&info), netns.as_fd()),
        answer(&mut conn)
    );
    assert_eq!(ack.unwrap(), AgentAck { error: None });
    let WorkloadEvent::Add {
        uid,
        info: got,
        netns: received,
    } = event
    else {
        panic!("not an add: {event:?}");
    };
    assert_eq!((uid.as_str(), got), ("uid-1", Some(info)));
    assert_ne!(received.as_raw_fd(), netns.as_raw_fd(), "a new descriptor");
    assert_eq!(
        NetnsId::of_fd(&received).unwrap(),
        NetnsId::of_fd(&netns).unwrap()
    );
    let meta = netns.metadata().unwrap();
    assert_eq!(
        NetnsId::of_fd(&received).unwrap(),
        NetnsId::new(meta.dev(), meta.ino())
    );
    let flags = nix::fcntl::fcntl(&received, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(
        flags & libc::FD_CLOEXEC,
        0,
        "received with MSG_CMSG_CLOEXEC"
    );

    // Without workload info.
    let (ack, event) = tokio::join!(peer.add("uid-2", None, netns.as_fd()), answer(&mut conn));
    assert!(ack.unwrap().is_ok());
    assert!(matches!(event, WorkloadEvent::Add { info: None, .. }));
}

#[tokio::test]
async fn keep_del_snapshot_round_trip() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    let (ack, event) = tokio::join!(peer.keep("k"), answer(&mut conn));
    assert!(ack.unwrap().is_ok());
    assert!(matches!(event, WorkloadEvent::Keep { uid } if uid == "k"));
    let (ack, event) = tokio::join!(peer.snapshot_sent(), answer(&mut conn));
    assert!(ack.unwrap().is_ok());
    assert!(matches!(event, WorkloadEvent::SnapshotSent));
    let (ack, event) = tokio::join!(peer.del("d"), answer(&mut conn));
    assert!(ack.unwrap().is_ok());
    assert!(matches!(event, WorkloadEvent::Del { uid } if uid == "d"));

    // Error acks carry the text; an empty error is not sent as success.
    for (error, want) in [("boom", "boom"), ("", "unspecified error")] {
        let tunnel = async {
            conn.next().await.unwrap().unwrap();
            conn.ack(Some(error.into())).await.unwrap();
        };
        let (ack, ()) = tokio::join!(peer.keep("k"), tunnel);
        assert_eq!(ack.unwrap().error.as_deref(), Some(want));
    }
}

#[tokio::test]
async fn violations_are_error_acked_and_the_connection_continues() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    let file = tempfile::tempfile().unwrap();
    for (bytes, fds, want) in bad_requests() {
        peer.send_raw(&bytes, &vec![file.as_fd(); fds])
            .await
            .unwrap();
        match answer(&mut conn).await {
            WorkloadEvent::Invalid(v) => assert_eq!(v, want),
            other => panic!("{want:?}: got {other:?}"),
        }
        let ack = peer.recv_ack().await.unwrap();
        assert_eq!(ack.error, Some(want.to_string()));

        // The next valid request works.
        let (ack, event) = tokio::join!(peer.keep("ok"), answer(&mut conn));
        assert!(ack.unwrap().is_ok(), "after {want:?}");
        assert!(matches!(event, WorkloadEvent::Keep { .. }));
    }
}

#[tokio::test]
async fn no_descriptor_leaks_over_200_bad_requests() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    // Every descriptor sent refers to this file, so any leaked copy shows up by its inode
    // (unlike a total count, which other tests running in parallel would disturb).
    let file = tempfile::tempfile().unwrap();
    let id = NetnsId::of_fd(&file).unwrap();
    assert_eq!(open_count(id), 1);
    let cases = bad_requests();
    for i in 0..200 {
        let (bytes, fds, _) = &cases[i % cases.len()];
        peer.send_raw(bytes, &vec![file.as_fd(); *fds])
            .await
            .unwrap();
        assert!(matches!(answer(&mut conn).await, WorkloadEvent::Invalid(_)));
        assert!(peer.recv_ack().await.unwrap().error.is_some());
    }
    // Valid adds whose events are dropped close their descriptor too.
    let (ack, _) = tokio::join!(peer.add("a", None, file.as_fd()), answer(&mut conn));
    assert!(ack.unwrap().is_ok());
    assert_eq!(open_count(id), 1);
}

#[tokio::test]
async fn agent_gone_is_end_of_stream() {
    let Setup {
        peer,
        mut conn,
        server,
        ..
    } = setup().await;
    peer.send_raw(&keep("last"), &[]).await.unwrap();
    drop(peer);
    drop(server);
    // What was sent before the close is still delivered, then the end.
    assert!(matches!(
        conn.next().await,
        Ok(Some(WorkloadEvent::Keep { .. }))
    ));
    assert!(matches!(conn.next().await, Ok(None)));
    assert!(matches!(conn.next().await, Ok(None)));
}

#[tokio::test]
async fn an_empty_datagram_is_a_request_without_payload_not_the_end() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    // A WorkloadRequest with no payload encodes to zero bytes: the same read length as a
    // close, which must not end the connection.
    peer.send_raw(&[], &[]).await.unwrap();
    let (event, ack) = tokio::join!(answer(&mut conn), peer.recv_ack());
    assert!(matches!(
        event,
        WorkloadEvent::Invalid(ProtocolViolation::NoPayload)
    ));
    assert_eq!(
        ack.unwrap().error.as_deref(),
        Some("request without payload")
    );
    // Still connected: the next request goes through.
    peer.send_raw(&keep("after"), &[]).await.unwrap();
    assert!(matches!(
        conn.next().await,
        Ok(Some(WorkloadEvent::Keep { .. }))
    ));
}

#[tokio::test]
async fn connect_errors_and_stale_socket_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let err = ZdsClient::connect(&path).await.unwrap_err();
    assert!(matches!(err, ZdsError::Connect { .. }), "{err}");
    // A socket file nobody listens on any more.
    drop(ZdsServer::bind(&path).unwrap());
    assert!(path.exists());
    let err = ZdsClient::connect(&path).await.unwrap_err();
    assert!(
        matches!(&err, ZdsError::Connect { source, .. }
        if source.kind() == io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    // The agent replaces it.
    let server = ZdsServer::bind(&path).unwrap();
    let (peer, conn) = tokio::join!(server.accept(), ZdsClient::connect(&path));
    peer.unwrap();
    conn.unwrap();
}

#[tokio::test]
async fn connect_retrying_waits_for_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let client = {
        let path = path.clone();
        tokio::spawn(async move {
            let mut backoff = reconnect_backoff();
            ZdsClient::connect_retrying(&path, &mut backoff).await;
            backoff.next_delay()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let server = ZdsServer::bind(&path).unwrap();
    server.accept().await.unwrap();
    // At least one failed attempt advanced the backoff.
    assert!(client.await.unwrap() > INITIAL_BACKOFF);
}

#[tokio::test]
async fn agent_times_out_without_an_ack() {
    let Setup {
        mut peer, mut conn, ..
    } = setup().await;
    peer.set_ack_timeout(Duration::from_millis(50));
    let (ack, event) = tokio::join!(peer.keep("k"), conn.next());
    assert!(matches!(event, Ok(Some(WorkloadEvent::Keep { .. }))));
    assert!(matches!(
        ack,
        Err(ZdsServerError::Timeout {
            waiting_for: "ack",
            ..
        })
    ));
}

#[test]
fn backoff_doubles_from_10ms_to_15s() {
    let mut b = reconnect_backoff();
    let ms: Vec<u128> = (0..13).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(
        ms,
        [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 15000, 15000]
    );
    b.reset();
    assert_eq!(b.next_delay(), INITIAL_BACKOFF);
}
