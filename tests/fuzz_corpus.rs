//! Replays the daemon's fuzz corpora (`fuzz/corpus/<target>/`: `xds_resources`,
//! `hbone_connect`, `local_yaml`, `dns_query`): every input the fuzzer kept, and every crash
//! it once found, must go through the decoder without a panic, forever. Each corpus must also
//! still reach its decoder: some input in it is accepted. Seeds come from real encoders
//! (`write_seeds` here, run with `--ignored`; the xDS seeds from the control plane's encoder,
//! `control/src/encode/fuzz_seeds.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodetunnel::fuzzing::{dns_query, hbone_connect, local_yaml, xds_response};

/// Every file of a corpus; fails when there is none, so a lost corpus cannot pass.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    nodetunnel_testbed::fuzz_corpus::files(target)
}

/// Runs `decode` on every file of `target`'s corpus; returns how many it accepted.
fn replay<T>(target: &str, decode: impl Fn(&[u8]) -> T, accepted: impl Fn(&T) -> bool) -> usize {
    let mut count = 0;
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&bytes)))
            .unwrap_or_else(|_| panic!("{target}: {} panics the decoder", path.display()));
        count += usize::from(accepted(&outcome));
    }
    count
}

#[test]
fn xds_resources_corpus_replays_without_panics() {
    let applied = replay(
        "xds_resources",
        xds_response,
        |r| matches!(r, Ok(n) if *n > 0),
    );
    assert!(applied > 0, "no corpus input applied a resource");
}

#[test]
fn hbone_connect_corpus_replays_without_panics() {
    let connects = replay("hbone_connect", hbone_connect, |(targets, _)| {
        targets.iter().any(Result::is_ok)
    });
    assert!(connects > 0, "no corpus input made a valid CONNECT");
}

#[test]
fn local_yaml_corpus_replays_without_panics() {
    let loaded = replay("local_yaml", local_yaml, Result::is_ok);
    assert!(loaded > 0, "no corpus input loaded");
}

#[test]
fn dns_query_corpus_replays_without_panics() {
    let answered = replay("dns_query", dns_query, |(reply, _)| {
        reply
            .as_deref()
            .and_then(|r| Message::from_vec(r).ok())
            .is_some_and(|m| !m.answers.is_empty())
    });
    assert!(answered > 0, "no corpus input was answered from the mesh");
}

fn write(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = nodetunnel_testbed::fuzz_corpus::dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

/// What a real h2 client sends for `requests` (after the preface, which the target adds).
async fn h2_client_bytes(requests: Vec<http::Request<()>>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (client_io, mut wire) = tokio::io::duplex(1 << 20);
    let (mut send, connection) = h2::client::handshake(client_io).await.unwrap();
    let driver = tokio::spawn(connection);
    for request in requests {
        let (_response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"hello"), true)
            .unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(200), wire.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    driver.abort();
    out.split_off(24) // the client preface
}

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header("forwarded", "for=10.0.0.5")
        .header("baggage", "k8s.namespace.name=default")
        .body(())
        .unwrap()
}

fn dns(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut q = Message::query();
    q.metadata.id = 0x1234;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        q.set_edns(e);
    }
    q
}

/// A `dns_query` input: flags, the query, an upstream reply.
fn dns_input(tcp: bool, query: &Message, upstream: &[u8]) -> Vec<u8> {
    let query = query.to_vec().unwrap();
    let mut out = vec![u8::from(tcp)];
    out.extend_from_slice(&(query.len() as u16).to_le_bytes());
    out.extend_from_slice(&query);
    out.extend_from_slice(upstream);
    out
}

#[tokio::test]
#[ignore = "writes the seed corpora: cargo test -p nodetunnel --test fuzz_corpus -- --ignored"]
async fn write_seeds() {
    write(
        "hbone_connect",
        vec![
            (
                "connect-ip",
                h2_client_bytes(vec![connect("10.77.2.10:8080")]).await,
            ),
            (
                "connect-v6",
                h2_client_bytes(vec![connect("[fd00::10]:9090")]).await,
            ),
            (
                "connect-hostname-and-get",
                h2_client_bytes(vec![
                    connect("server.default.svc.cluster.local:80"),
                    http::Request::get("http://10.0.0.1/").body(()).unwrap(),
                ])
                .await,
            ),
        ],
    );

    let rich =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rich-mesh.yaml"))
            .unwrap();
    let small = b"workloads:\n- uid: cluster1//v1/Pod/default/client\n  name: client\n  namespace: default\n  serviceAccount: sleep\n  workloadIps: [\"10.77.1.10\"]\n  protocol: HBONE\n  services:\n    \"default/server.default.svc.cluster.local\":\n      80: 9090\nservices:\n- name: server\n  namespace: default\n  hostname: server.default.svc.cluster.local\n  vips: [\"/10.96.0.10\"]\n  ports:\n    80: 8080\n".to_vec();
    write("local_yaml", vec![("rich-mesh", rich), ("small", small)]);

    let mesh_name = "server.default.svc.cluster.local";
    let mut big = Message::response(0x1234, hickory_proto::op::OpCode::Query);
    big.add_query(Query::query(
        Name::from_ascii("big.example.").unwrap(),
        RecordType::TXT,
    ));
    for i in 0..40 {
        big.add_answer(Record::from_rdata(
            Name::from_ascii("big.example.").unwrap(),
            60,
            RData::TXT(TXT::new(vec![format!("{i:0>60}")])),
        ));
    }
    let big = big.to_vec().unwrap();
    write(
        "dns_query",
        vec![
            (
                "a-mesh",
                dns_input(false, &dns(mesh_name, RecordType::A, None), &[]),
            ),
            (
                "aaaa-mesh-edns-tcp",
                dns_input(true, &dns(mesh_name, RecordType::AAAA, Some(1232)), &[]),
            ),
            (
                "a-short-name",
                dns_input(false, &dns("server", RecordType::A, None), &[]),
            ),
            (
                "txt-forwarded-big-reply",
                dns_input(
                    false,
                    &dns("big.example.", RecordType::TXT, Some(512)),
                    &big,
                ),
            ),
        ],
    );
}
