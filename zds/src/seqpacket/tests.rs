use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use super::*;

async fn pair(dir: &Path) -> (SeqPacket, SeqPacket) {
    let listener = SeqPacketListener::bind(&dir.join("s.sock")).unwrap();
    let client = SeqPacket::connect(&dir.join("s.sock")).unwrap();
    (client, listener.accept().await.unwrap())
}

fn open_count(file: &std::fs::File) -> usize {
    let meta = file.metadata().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .filter(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        .count()
}

#[tokio::test]
async fn overflowing_the_control_buffer_still_owns_what_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = pair(dir.path()).await;
    server.shrink_control_buffer();
    let file = tempfile::tempfile().unwrap();
    client.send(b"x", &[file.as_fd(); 5]).await.unwrap();
    let mut buf = [0u8; 16];
    let d = server.recv(&mut buf).await.unwrap().unwrap();
    assert!(d.control_truncated && !d.truncated);
    // The kernel installed the two that fit and dropped the rest; we own the two.
    assert_eq!(d.fds.len(), 2);
    assert_eq!(open_count(&file), 3);
    drop(d);
    assert_eq!(open_count(&file), 1);
}

#[tokio::test]
async fn datagram_boundaries_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (client, mut server) = pair(dir.path()).await;
    client.send(&[1; 10], &[]).await.unwrap();
    client.send(&[2; 3], &[]).await.unwrap();
    let mut buf = [0u8; 4];
    let d = server.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!((d.len, d.truncated), (4, true));
    // The rest of the first datagram is gone; the second arrives whole.
    let d = server.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!((d.len, d.truncated), (3, false));
    assert_eq!(&buf[..3], [2; 3]);
    drop(client);
    assert!(server.recv(&mut buf).await.unwrap().is_none());
}

/// The socket file is owner-only from the moment it listens (set between bind and listen).
#[tokio::test]
async fn the_listening_socket_file_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _listener = SeqPacketListener::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
}
