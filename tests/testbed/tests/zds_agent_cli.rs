//! `nodetunnel-zds-agent` as a process, driven through stdin/stdout like the demo and bench do,
//! with an emulated tunnel (`ZdsClient`) on its socket. Needs no privileges.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nodetunnel_zds::client::{WorkloadEvent, WorkloadInfo, ZdsClient, ZdsConnection};

const WAIT: Duration = Duration::from_secs(10);

struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn spawn(socket: &std::path::Path) -> Agent {
        Agent::spawn_with(socket, &[])
    }

    fn spawn_with(socket: &std::path::Path, args: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodetunnel-zds-agent"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning nodetunnel-zds-agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Agent {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a stdout line in time")
    }

    fn expect(&self, want: &[&str]) {
        for want in want {
            assert_eq!(self.line(), *want);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only if a failed assertion left it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn answer(conn: &mut ZdsConnection, error: Option<&str>) -> WorkloadEvent {
    let event = tokio::time::timeout(WAIT, conn.next()).await;
    let event = event
        .expect("a request in time")
        .unwrap()
        .expect("a request");
    conn.ack(error.map(String::from)).await.unwrap();
    event
}

#[tokio::test]
async fn zds_agent_tool_over_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("zds.sock");
    let mut agent = Agent::spawn(&socket);

    agent.send("list");
    agent.expect(&["list 0 pods, no tunnel"]);
    assert!(socket.exists(), "listening before the first result");

    agent.send("add pod-a /proc/self/ns/net ns-1/client/sa-1");
    agent.send("add pod-b /no/such/netns");
    agent.send("frobnicate");
    agent.send("add pod-c no-such-named-netns-for-this-test");
    agent.send("");
    agent.expect(&["pending add pod-a: no tunnel connected"]);
    let line = agent.line();
    assert!(
        line.starts_with("error add pod-b: pod pod-b: cannot open netns /no/such/netns: "),
        "{line}"
    );
    let line = agent.line();
    assert!(
        line.starts_with("error add pod-c: pod pod-c: cannot open netns /run/netns/no-such-"),
        "{line}"
    );

    // A tunnel connects: the snapshot holds pod-a, with its info and a netns descriptor.
    let mut conn = ZdsClient::connect(&socket).await.unwrap();
    match answer(&mut conn, None).await {
        WorkloadEvent::Add { uid, info, .. } => {
            let want = WorkloadInfo {
                name: "client".into(),
                namespace: "ns-1".into(),
                service_account: "sa-1".into(),
            };
            assert_eq!((uid.as_str(), info), ("pod-a", Some(want)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        answer(&mut conn, None).await,
        WorkloadEvent::SnapshotSent
    ));
    agent.expect(&["tunnel connected", "snapshot sent: 1 pods, acks ok"]);

    agent.send("add pod-d /proc/self/ns/net");
    answer(&mut conn, None).await;
    agent.expect(&["ack add pod-d ok"]);
    agent.send("del pod-a");
    assert!(matches!(
        answer(&mut conn, Some("not running")).await,
        WorkloadEvent::Del { uid } if uid == "pod-a"
    ));
    agent.expect(&["ack del pod-a error: not running"]);
    agent.send("list");
    agent.expect(&[
        "list 1 pods, tunnel connected",
        "pod pod-d /proc/self/ns/net -",
    ]);

    drop(conn);
    agent.expect(&["tunnel disconnected: the tunnel closed the connection"]);
    agent.send("del pod-d");
    agent.expect(&["pending del pod-d: no tunnel connected"]);

    // EOF: exit 0, socket file gone, the malformed command reported on stderr.
    drop(agent.stdin.take());
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(agent.lines.recv_timeout(WAIT).is_err(), "no more output");
    assert!(!socket.exists(), "socket file removed");
    let mut stderr = String::new();
    let mut pipe = agent.child.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    assert!(
        stderr.contains("usage error: unknown command \"frobnicate\""),
        "{stderr}"
    );
}

/// `--hold`: a tunnel that connects waits until `serve`, and then gets every pod added
/// meanwhile in one snapshot — a restarted node agent never hands a reconnecting tunnel an
/// empty snapshot (which would drain its pods).
#[tokio::test]
async fn a_held_agent_takes_tunnels_only_after_serve() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("zds.sock");
    let mut agent = Agent::spawn_with(&socket, &["--hold"]);
    agent.send("list");
    agent.expect(&["list 0 pods, no tunnel"]);
    // The tunnel connects first (its hello waits in the socket), then the pods are added:
    // without the hold it would be current already and get each add acked.
    let connecting = tokio::spawn({
        let socket = socket.clone();
        async move { ZdsClient::connect(&socket).await }
    });
    agent.send("add pod-a /proc/self/ns/net ns-1/a/sa");
    agent.send("add pod-b /proc/self/ns/net ns-1/b/sa");
    agent.expect(&[
        "pending add pod-a: no tunnel connected",
        "pending add pod-b: no tunnel connected",
    ]);
    agent.send("serve");
    let mut conn = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("connected in time")
        .unwrap()
        .expect("connecting");
    for uid in ["pod-a", "pod-b"] {
        match answer(&mut conn, None).await {
            WorkloadEvent::Add { uid: got, .. } => assert_eq!(got, uid),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        answer(&mut conn, None).await,
        WorkloadEvent::SnapshotSent
    ));
    agent.expect(&["tunnel connected", "snapshot sent: 2 pods, acks ok"]);
    drop(agent.stdin.take());
    assert!(agent.child.wait().unwrap().success());
}
