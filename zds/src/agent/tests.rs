//! The agent against emulated tunnels (`ZdsClient` over a real socket in a temp dir), with real
//! descriptors: `/proc/self/ns/net` as a netns, or a temp file where a count of open copies
//! must not be disturbed by other tests.

use std::os::unix::fs::MetadataExt;

use super::lines;
use super::*;
use crate::client::{WorkloadEvent, ZdsClient, ZdsConnection};
use nodetunnel_base::netns::NetnsId;

const NETNS: &str = "/proc/self/ns/net";
const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    dir: tempfile::TempDir,
    agent: ZdsAgent,
    events: mpsc::UnboundedReceiver<AgentEvent>,
}

fn start(ack_timeout: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = ZdsServer::bind(dir.path().join("zds.sock")).unwrap();
    let (agent, events) = ZdsAgent::start(server, ack_timeout);
    Setup { dir, agent, events }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<AgentEvent>) -> AgentEvent {
    let event = tokio::time::timeout(WAIT, events.recv()).await;
    event
        .expect("an event in time")
        .expect("the agent is running")
}

/// The rendered lines of the next `n` events.
async fn next_lines(events: &mut mpsc::UnboundedReceiver<AgentEvent>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(lines::render(&next_event(events).await));
    }
    out
}

/// The tunnel's side of one request: read it and ack it (`error` for an error ack).
async fn answer(conn: &mut ZdsConnection, error: Option<&str>) -> WorkloadEvent {
    let event = tokio::time::timeout(WAIT, conn.next()).await;
    let event = event
        .expect("a request in time")
        .unwrap()
        .expect("a request");
    conn.ack(error.map(String::from)).await.unwrap();
    event
}

/// Connects a tunnel and answers the snapshot (`pods` adds or keeps, then `SnapshotSent`);
/// returns the connection and the requests as `(kind, uid)`, checked against `events`.
async fn connect(s: &mut Setup, pods: usize) -> (ZdsConnection, Vec<(String, String)>) {
    let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..pods {
        got.push(describe(&answer(&mut conn, None).await));
    }
    let last = answer(&mut conn, None).await;
    assert!(matches!(last, WorkloadEvent::SnapshotSent), "{last:?}");
    loop {
        match next_event(&mut s.events).await {
            AgentEvent::Connected | AgentEvent::Replaced => {}
            AgentEvent::SnapshotSent { pods: n, problems } => {
                assert_eq!((n, problems), (pods, vec![]));
                break;
            }
            other => panic!("during the snapshot: {other:?}"),
        }
    }
    (conn, got)
}

fn describe(event: &WorkloadEvent) -> (String, String) {
    let (kind, uid) = match event {
        WorkloadEvent::Add { uid, netns, .. } => {
            let id = NetnsId::of_fd(netns).unwrap();
            assert_eq!(id, file_id(NETNS), "{uid}: the netns descriptor");
            ("add", uid)
        }
        WorkloadEvent::Keep { uid } => ("keep", uid),
        WorkloadEvent::Del { uid } => ("del", uid),
        other => panic!("unexpected {other:?}"),
    };
    (kind.to_owned(), uid.clone())
}

fn file_id(path: impl AsRef<Path>) -> NetnsId {
    let meta = std::fs::metadata(path).unwrap();
    NetnsId::new(meta.dev(), meta.ino())
}

/// Open descriptors in this process that refer to the file `id`.
fn open_count(id: NetnsId) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| NetnsId::new(m.dev(), m.ino()) == id)
        .count()
}

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, u)| ((*k).to_owned(), (*u).to_owned()))
        .collect()
}

fn acked_ok(outcome: Result<RequestOutcome, AgentError>) -> bool {
    matches!(outcome, Ok(RequestOutcome::Acked(Ack { error: None })))
}

#[tokio::test]
async fn snapshot_on_connect_has_every_pod_then_snapshot_sent() {
    let mut s = start(ACK);
    for uid in ["b", "a", "c"] {
        let outcome = s.agent.add(uid, NETNS, Some(info(uid))).await;
        assert!(
            matches!(outcome, Ok(RequestOutcome::NoTunnel)),
            "{outcome:?}"
        );
    }
    let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
    for uid in ["a", "b", "c"] {
        match answer(&mut conn, None).await {
            WorkloadEvent::Add {
                uid: got,
                info: got_info,
                netns,
            } => {
                assert_eq!((got.as_str(), got_info), (uid, Some(info(uid))));
                assert_eq!(NetnsId::of_fd(&netns).unwrap(), file_id(NETNS));
            }
            other => panic!("{uid}: {other:?}"),
        }
    }
    let last = answer(&mut conn, None).await;
    assert!(matches!(last, WorkloadEvent::SnapshotSent), "{last:?}");
    assert_eq!(
        next_lines(&mut s.events, 2).await,
        ["tunnel connected", "snapshot sent: 3 pods, acks ok"]
    );
    let listing = s.agent.list().await.unwrap();
    assert!(listing.tunnel_connected);
    let uids: Vec<_> = listing.pods.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(uids, ["a", "b", "c"]);
}

#[tokio::test]
async fn reconnect_gets_the_snapshot_again_with_changes_made_meanwhile() {
    let mut s = start(ACK);
    s.agent.add("a", NETNS, None).await.unwrap();
    s.agent.add("b", NETNS, None).await.unwrap();
    let (conn, got) = connect(&mut s, 2).await;
    assert_eq!(got, pairs(&[("add", "a"), ("add", "b")]));

    drop(conn);
    assert_eq!(
        next_lines(&mut s.events, 1).await,
        ["tunnel disconnected: the tunnel closed the connection"]
    );
    let added = s.agent.add("c", NETNS, None).await;
    assert!(matches!(added, Ok(RequestOutcome::NoTunnel)), "{added:?}");
    let deleted = s.agent.del("a").await;
    assert!(
        matches!(deleted, Ok(RequestOutcome::NoTunnel)),
        "{deleted:?}"
    );

    let (_conn, got) = connect(&mut s, 2).await;
    assert_eq!(got, pairs(&[("add", "b"), ("add", "c")]));
}

#[tokio::test]
async fn add_and_del_are_forwarded_and_acked() {
    let mut s = start(ACK);
    let (mut conn, _) = connect(&mut s, 0).await;
    let (added, event) = tokio::join!(
        s.agent.add("a", NETNS, Some(info("pod-a"))),
        answer(&mut conn, None)
    );
    assert!(acked_ok(added));
    match event {
        WorkloadEvent::Add { uid, info: i, .. } => {
            assert_eq!((uid.as_str(), i), ("a", Some(info("pod-a"))))
        }
        other => panic!("{other:?}"),
    }
    let (deleted, event) = tokio::join!(s.agent.del("a"), answer(&mut conn, None));
    assert!(acked_ok(deleted));
    assert_eq!(describe(&event), ("del".into(), "a".into()));
    assert!(s.agent.list().await.unwrap().pods.is_empty());

    // Submitted commands report through the event stream, in order.
    s.agent.submit(Request::Add(Pod {
        uid: "b".into(),
        netns: NETNS.into(),
        info: None,
    }));
    s.agent.submit(Request::List);
    answer(&mut conn, None).await;
    assert_eq!(
        next_lines(&mut s.events, 2).await,
        [
            "ack add b ok",
            "list 1 pods, tunnel connected",
            "pod b /proc/self/ns/net -"
        ]
    );
}

#[tokio::test]
async fn error_acks_are_surfaced() {
    let mut s = start(ACK);
    s.agent.add("a", NETNS, None).await.unwrap();
    let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
    answer(&mut conn, Some("no such pod\nreally")).await;
    answer(&mut conn, Some("not ready")).await;
    assert_eq!(
        next_lines(&mut s.events, 2).await,
        [
            "tunnel connected",
            "snapshot ack add a error: no such pod really",
            "snapshot ack snapshot-sent error: not ready",
            "snapshot sent: 1 pods, 2 error acks"
        ]
    );

    let (added, _) = tokio::join!(
        s.agent.add("b", NETNS, None),
        answer(&mut conn, Some("boom"))
    );
    let Ok(RequestOutcome::Acked(Ack { error })) = added else {
        panic!("{added:?}");
    };
    assert_eq!(error.as_deref(), Some("boom"));
    // The pod is recorded all the same: the agent's set is the source of truth.
    assert_eq!(s.agent.list().await.unwrap().pods.len(), 2);

    s.agent.submit(Request::Del { uid: "b".into() });
    answer(&mut conn, Some("gone")).await;
    assert_eq!(
        next_lines(&mut s.events, 1).await,
        ["ack del b error: gone"]
    );
}

#[tokio::test]
async fn a_bad_netns_path_is_a_clear_error_and_records_nothing() {
    let mut s = start(ACK);
    let (mut conn, _) = connect(&mut s, 0).await;
    let missing = s.dir.path().join("no-such-netns");
    let err = s.agent.add("pod-x", &missing, None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AgentError::OpenNetns { .. }), "{err:?}");
    assert!(
        text.contains("pod-x") && text.contains(&*missing.to_string_lossy()),
        "{text}"
    );
    assert!(s.agent.list().await.unwrap().pods.is_empty());

    // Nothing reached the tunnel: the next request it sees is this del.
    let (deleted, event) = tokio::join!(s.agent.del("other"), answer(&mut conn, None));
    assert!(acked_ok(deleted));
    assert_eq!(describe(&event), ("del".into(), "other".into()));

    s.agent.submit(Request::Add(Pod {
        uid: "pod-x".into(),
        netns: missing.clone().into(),
        info: None,
    }));
    let line = next_lines(&mut s.events, 1).await.remove(0);
    assert!(
        line.starts_with("error add pod-x: pod pod-x: cannot open netns "),
        "{line}"
    );
}

#[tokio::test]
async fn the_newest_connection_wins() {
    let mut s = start(ACK);
    s.agent.add("a", NETNS, None).await.unwrap();
    let (mut old, _) = connect(&mut s, 1).await;
    let (mut new, got) = connect(&mut s, 1).await;
    assert_eq!(got, pairs(&[("add", "a")]));

    let (added, event) = tokio::join!(s.agent.add("b", NETNS, None), answer(&mut new, None));
    assert!(acked_ok(added));
    assert_eq!(describe(&event), ("add".into(), "b".into()));
    // The older connection stays open and gets no adds…
    let idle = tokio::time::timeout(Duration::from_millis(100), old.next()).await;
    assert!(idle.is_err(), "the old tunnel got {idle:?}");
    // …but every del, so it stops serving a pod that is gone.
    let (deleted, on_old, on_new) = tokio::join!(
        s.agent.del("a"),
        answer(&mut old, None),
        answer(&mut new, None)
    );
    assert!(acked_ok(deleted));
    assert_eq!(describe(&on_old), ("del".into(), "a".into()));
    assert_eq!(describe(&on_new), ("del".into(), "a".into()));

    // Its tunnel closing it later does not disturb the current one.
    drop(old);
    let (deleted, _) = tokio::join!(s.agent.del("b"), answer(&mut new, None));
    assert!(acked_ok(deleted));
    let listing = s.agent.list().await.unwrap();
    assert!(listing.tunnel_connected);
}

#[tokio::test]
async fn replaced_is_logged_before_the_new_connection() {
    let mut s = start(ACK);
    let mut _old = ZdsClient::connect(s.agent.path()).await.unwrap();
    answer(&mut _old, None).await;
    assert_eq!(
        next_lines(&mut s.events, 2).await,
        ["tunnel connected", "snapshot sent: 0 pods, acks ok"]
    );
    let mut new = ZdsClient::connect(s.agent.path()).await.unwrap();
    answer(&mut new, None).await;
    assert_eq!(
        next_lines(&mut s.events, 3).await,
        [
            "tunnel replaced by a newer connection",
            "tunnel connected",
            "snapshot sent: 0 pods, acks ok"
        ]
    );
}

#[tokio::test]
async fn a_silent_tunnel_is_dropped_and_the_pod_goes_out_next_time() {
    let mut s = start(Duration::from_millis(100));
    let (mut conn, _) = connect(&mut s, 0).await;
    let (added, event) = tokio::join!(s.agent.add("a", NETNS, None), conn.next());
    assert!(matches!(event, Ok(Some(WorkloadEvent::Add { .. }))));
    assert!(
        matches!(
            added,
            Ok(RequestOutcome::TunnelLost(ZdsServerError::Timeout { .. }))
        ),
        "{added:?}"
    );
    let line = next_lines(&mut s.events, 1).await.remove(0);
    assert!(line.starts_with("tunnel disconnected: no ack"), "{line}");
    // The agent dropped the connection.
    assert!(matches!(conn.next().await, Ok(None)));

    let (_conn, got) = connect(&mut s, 1).await;
    assert_eq!(got, pairs(&[("add", "a")]));
}

#[tokio::test]
async fn a_pod_whose_netns_vanished_is_sent_as_keep() {
    let mut s = start(ACK);
    let path = s.dir.path().join("netns-a");
    std::fs::write(&path, b"").unwrap();
    s.agent.add("a", &path, None).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
    assert_eq!(describe(&answer(&mut conn, None).await).0, "keep");
    answer(&mut conn, None).await;
    let got = next_lines(&mut s.events, 2).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[1].starts_with("snapshot keep a: cannot open netns "),
        "{got:?}"
    );
    assert_eq!(got[2], "snapshot sent: 1 pods, acks ok");
}

#[tokio::test]
async fn a_held_netns_is_sent_even_after_its_path_is_gone() {
    let mut s = start(ACK);
    let path = s.dir.path().join("netns-held");
    std::fs::write(&path, b"").unwrap();
    let id = file_id(&path);
    let held = NetnsSource::Held {
        fd: Arc::new(OwnedFd::from(File::open(&path).unwrap())),
        described_as: path.clone(),
    };
    s.agent.add("a", held, None).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    // Every snapshot (two connections) still carries the held namespace, not a keep.
    for _ in 0..2 {
        let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
        let WorkloadEvent::Add { uid, netns, .. } = answer(&mut conn, None).await else {
            panic!("not an add");
        };
        assert_eq!((uid.as_str(), NetnsId::of_fd(&netns).unwrap()), ("a", id));
        answer(&mut conn, None).await;
        let mut got = Vec::new();
        while !got.iter().any(|l: &String| l.starts_with("snapshot sent")) {
            got.extend(next_lines(&mut s.events, 1).await);
        }
        assert_eq!(
            got.last().unwrap(),
            "snapshot sent: 1 pods, acks ok",
            "{got:?}"
        );
    }
}

#[tokio::test]
async fn netns_descriptors_are_closed_after_sending() {
    let mut s = start(ACK);
    // A file of its own, so other tests opening /proc/self/ns/net do not disturb the count.
    let path = s.dir.path().join("netns-file");
    std::fs::write(&path, b"").unwrap();
    let id = file_id(&path);
    s.agent.add("a", &path, None).await.unwrap();
    assert_eq!(open_count(id), 0);
    let mut conn = ZdsClient::connect(s.agent.path()).await.unwrap();
    let WorkloadEvent::Add { netns, .. } = answer(&mut conn, None).await else {
        panic!("not an add");
    };
    assert_eq!(NetnsId::of_fd(&netns).unwrap(), id);
    drop(netns);
    answer(&mut conn, None).await;
    next_lines(&mut s.events, 2).await;
    for _ in 0..20 {
        let (added, _) = tokio::join!(s.agent.add("a", &path, None), answer(&mut conn, None));
        assert!(acked_ok(added));
    }
    assert_eq!(open_count(id), 0);
}

#[tokio::test]
async fn shutdown_removes_the_socket_and_ends_the_events() {
    let mut s = start(ACK);
    let path = s.agent.path().to_owned();
    let (mut conn, _) = connect(&mut s, 0).await;
    s.agent.submit(Request::List);
    s.agent.shutdown().await;
    assert!(!path.exists());
    // Queued commands finished first; then the stream ends.
    let lines = next_lines(&mut s.events, 1).await;
    assert_eq!(lines, ["list 0 pods, tunnel connected"]);
    assert!(s.events.recv().await.is_none());
    assert!(matches!(conn.next().await, Ok(None)));
    assert!(ZdsClient::connect(&path).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_agent() {
    let mut s = start(ACK);
    let (mut conn, _) = connect(&mut s, 0).await;
    drop(s.agent);
    assert!(tokio::time::timeout(WAIT, s.events.recv())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(conn.next().await, Ok(None)));
}

#[test]
fn event_lines() {
    let lost = RequestOutcome::TunnelLost(ZdsServerError::Closed);
    let cases: Vec<(AgentEvent, Vec<&str>)> = vec![
        (
            AgentEvent::Deleted {
                uid: "u".into(),
                outcome: RequestOutcome::NoTunnel,
            },
            vec!["pending del u: no tunnel connected"],
        ),
        (
            AgentEvent::Added {
                uid: "u".into(),
                result: Ok(lost),
            },
            vec!["pending add u: tunnel lost: the tunnel closed the connection"],
        ),
        (
            AgentEvent::Listed(Listing {
                pods: vec![Pod {
                    uid: "u".into(),
                    netns: "/run/netns/x".into(),
                    info: Some(info("p")),
                }],
                tunnel_connected: false,
            }),
            vec!["list 1 pods, no tunnel", "pod u /run/netns/x ns/p/sa"],
        ),
        (
            AgentEvent::Disconnected {
                reason: "a\nb".into(),
            },
            vec!["tunnel disconnected: a b"],
        ),
    ];
    for (event, want) in cases {
        assert_eq!(lines::render(&event), want, "{event:?}");
    }
}

const ACK: Duration = crate::server::ACK_TIMEOUT;

#[tokio::test]
async fn a_gated_agent_serves_tunnels_only_after_the_gate_with_what_was_added_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let server = ZdsServer::bind(dir.path().join("zds.sock")).unwrap();
    let (open, gate) = oneshot::channel::<()>();
    let (agent, mut events) = ZdsAgent::start_when(server, ACK, async move {
        let _ = gate.await;
    });
    // A tunnel connecting now waits: no snapshot (an empty one would drain its pods).
    let mut conn = ZdsClient::connect(agent.path()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), conn.next())
            .await
            .is_err(),
        "a request arrived before the gate opened"
    );
    assert!(matches!(
        agent.add("a", NETNS, None).await.unwrap(),
        RequestOutcome::NoTunnel
    ));
    open.send(()).unwrap();
    assert_eq!(
        describe(&answer(&mut conn, None).await),
        ("add".into(), "a".into())
    );
    assert!(matches!(
        answer(&mut conn, None).await,
        WorkloadEvent::SnapshotSent
    ));
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.starts_with("snapshot sent")) {
        got.extend(next_lines(&mut events, 1).await);
    }
    assert_eq!(
        got.last().unwrap(),
        "snapshot sent: 1 pods, acks ok",
        "{got:?}"
    );
}

/// A client that connects and says nothing does not hold up the tunnel connecting after it:
/// that one gets its snapshot while the first is still waiting for its hello; when the first
/// finally says hello it is served too (as the newest).
#[tokio::test]
async fn a_silent_connection_does_not_hold_up_the_next_tunnel() {
    use crate::seqpacket::SeqPacket;
    use nodetunnel_proto::istio::zds::{Version, ZdsHello};
    use prost::Message;

    let mut s = start(ACK);
    s.agent.add("a", NETNS, None).await.unwrap();
    let silent = SeqPacket::connect(s.agent.path()).unwrap();
    let (_tunnel, got) = connect(&mut s, 1).await;
    assert_eq!(got, pairs(&[("add", "a")]));
    // Still open, still waiting: its hello now makes it the current tunnel.
    let hello = ZdsHello {
        version: Version::V1 as i32,
    };
    silent.send(&hello.encode_to_vec(), &[]).await.unwrap();
    let replaced = next_event(&mut s.events).await;
    assert!(matches!(replaced, AgentEvent::Replaced), "{replaced:?}");
}

/// Past [`MAX_PENDING_HELLOS`] connections that have not said hello, a new one is closed at
/// once instead of queueing behind them.
#[tokio::test]
async fn connections_beyond_the_pending_hello_cap_are_closed() {
    use crate::seqpacket::SeqPacket;

    let s = start(ACK);
    let _silent: Vec<SeqPacket> = (0..MAX_PENDING_HELLOS)
        .map(|_| SeqPacket::connect(s.agent.path()).unwrap())
        .collect();
    let mut extra = SeqPacket::connect(s.agent.path()).unwrap();
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(WAIT, extra.recv(&mut buf))
        .await
        .expect("the extra connection closed in time");
    assert!(matches!(got, Ok(None)), "{got:?}");
}

/// Tunnels that keep reconnecting leave at most [`MAX_RETIRED`] retired connections open:
/// the oldest is closed.
#[tokio::test]
async fn retired_connections_are_bounded() {
    let mut s = start(ACK);
    let (mut first, _) = connect(&mut s, 0).await;
    let mut later = Vec::new();
    // MAX_RETIRED + 1 newer connections: the last is current, the other MAX_RETIRED and
    // `first` were retired in turn.
    for _ in 0..=MAX_RETIRED {
        later.push(connect(&mut s, 0).await.0);
    }
    // `first` is the oldest of MAX_RETIRED + 1 retired connections: closed.
    let got = tokio::time::timeout(WAIT, first.next())
        .await
        .expect("the oldest retired connection closed in time");
    assert!(matches!(got, Ok(None)), "{got:?}");
    // The next-oldest is kept.
    let idle = tokio::time::timeout(Duration::from_millis(100), later[0].next()).await;
    assert!(idle.is_err(), "the second connection got {idle:?}");
}
