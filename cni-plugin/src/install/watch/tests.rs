use super::*;
use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::Event;

fn ev(kind: EventKind, path: &str) -> notify::Result<Event> {
    Ok(Event::new(kind).add_path(PathBuf::from(path)))
}

#[test]
fn only_writes_to_interesting_files_count() {
    let interests = [
        (PathBuf::from("/net.d"), Interest::Configs),
        (
            PathBuf::from("/bin"),
            Interest::File("nodetunnel-cni".into()),
        ),
    ];
    let yes = |e| assert!(relevant(&e, &interests), "{e:?}");
    let no = |e| assert!(!relevant(&e, &interests), "{e:?}");
    yes(ev(
        EventKind::Create(CreateKind::File),
        "/net.d/10-a.conflist",
    ));
    yes(ev(EventKind::Modify(ModifyKind::Any), "/net.d/10-a.conf"));
    yes(ev(
        EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        "/net.d/10-a.json",
    ));
    yes(ev(
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
        "/net.d/10-a.conflist",
    ));
    yes(ev(
        EventKind::Remove(RemoveKind::File),
        "/bin/nodetunnel-cni",
    ));
    yes(Ok(Event::new(EventKind::Other)));
    yes(Err(notify::Error::generic("queue overflow")));
    no(ev(
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        "/net.d/10-a.conflist",
    ));
    no(ev(
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
        "/net.d/10-a.conflist",
    ));
    no(ev(EventKind::Modify(ModifyKind::Any), "/net.d/notes.txt"));
    no(ev(
        EventKind::Modify(ModifyKind::Any),
        "/net.d/.10-a.conflist.1.nodetunnel-tmp",
    ));
    no(ev(EventKind::Modify(ModifyKind::Any), "/bin/bridge"));
    no(ev(
        EventKind::Modify(ModifyKind::Any),
        "/elsewhere/10-a.conflist",
    ));
}

#[tokio::test]
async fn a_real_write_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DirWatch::new(&[(dir.path().to_owned(), Interest::Configs)]).unwrap();
    std::fs::write(dir.path().join("10-a.conflist"), b"{}").unwrap();
    let got = timeout(Duration::from_secs(10), w.changed()).await;
    assert_eq!(got.ok(), Some(true));
}
