//! Replays the `zds_message` fuzz corpus (`fuzz/corpus/zds_message/`): every input the fuzzer
//! kept, and every crash it once found, must decode without a panic, forever. The seeds are
//! real messages written by `write_seeds` (run with `--ignored` after a protocol change).

use std::path::{Path, PathBuf};

use nodetunnel_proto::istio::zds::{
    self as pb, workload_request::Payload, workload_response, Version, WorkloadRequest,
    WorkloadResponse, ZdsHello,
};
use nodetunnel_zds::fuzzing::{zds_datagram, ZdsOutcome};
use prost::Message;

const TARGET: &str = "zds_message";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(TARGET)
}

/// Every file of the corpus; fails when there is none, so a lost corpus cannot pass.
fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} unreadable: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("corpus file {} unreadable: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
}

#[test]
fn zds_corpus_replays_without_panics() {
    let mut accepted = 0;
    for (path, bytes) in corpus() {
        let outcome = std::panic::catch_unwind(|| zds_datagram(&bytes))
            .unwrap_or_else(|_| panic!("{} panics the ZDS decoder", path.display()));
        match outcome {
            ZdsOutcome::Request(Ok(_)) => accepted += 1,
            ZdsOutcome::AgentSide { hello, ack } if hello.is_ok() || ack.is_ok() => accepted += 1,
            _ => {}
        }
    }
    // The seeds are valid messages: if none is accepted, the entry point no longer reaches
    // the decoder (or the seeds rotted).
    assert!(accepted > 0, "no corpus input decoded to a valid message");
}

/// One `SCM_RIGHTS` control message carrying `fds`, laid out as the kernel writes it.
fn scm_rights(fds: &[i32]) -> Vec<u8> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let len = header + 4 * fds.len();
    let mut buf = vec![0u8; len.next_multiple_of(std::mem::size_of::<usize>())];
    buf[..std::mem::size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
    let level = std::mem::offset_of!(libc::cmsghdr, cmsg_level);
    let kind = std::mem::offset_of!(libc::cmsghdr, cmsg_type);
    buf[level..level + 4].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    buf[kind..kind + 4].copy_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
    for (i, fd) in fds.iter().enumerate() {
        buf[header + 4 * i..header + 4 * i + 4].copy_from_slice(&fd.to_ne_bytes());
    }
    buf
}

/// A fuzz input in `zds_datagram`'s layout.
fn input(flags: u8, control: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(control.len() as u16).to_le_bytes());
    out.extend_from_slice(control);
    out.extend_from_slice(payload);
    out
}

fn request(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

#[test]
#[ignore = "writes the seed corpus: cargo test -p nodetunnel-zds --test fuzz_corpus -- --ignored"]
fn write_seeds() {
    let add = request(Payload::Add(pb::AddWorkload {
        uid: "pod-uid-1".into(),
        workload_info: Some(pb::WorkloadInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            windows_namespace: None,
        }),
    }));
    let one_fd = 1 << 2;
    let seeds = [
        ("add", input(one_fd, &scm_rights(&[7]), &add)),
        ("add-two-fds", input(2 << 2, &scm_rights(&[7, 8]), &add)),
        ("add-ctrunc", input(one_fd | 0x02, &scm_rights(&[7]), &add)),
        (
            "keep",
            input(
                0,
                &[],
                &request(Payload::Keep(pb::KeepWorkload { uid: "u".into() })),
            ),
        ),
        (
            "del",
            input(
                0,
                &[],
                &request(Payload::Del(pb::DelWorkload { uid: "u".into() })),
            ),
        ),
        (
            "snapshot-sent",
            input(0, &[], &request(Payload::SnapshotSent(pb::SnapshotSent {}))),
        ),
        (
            "hello",
            input(
                0x10,
                &[],
                &ZdsHello {
                    version: Version::V1 as i32,
                }
                .encode_to_vec(),
            ),
        ),
        (
            "ack-error",
            input(
                0x10,
                &[],
                &WorkloadResponse {
                    payload: Some(workload_response::Payload::Ack(pb::Ack {
                        error: "netns gone".into(),
                    })),
                }
                .encode_to_vec(),
            ),
        ),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
