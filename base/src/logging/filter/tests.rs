//! The filter control on a real subscriber (this thread's default), writing into a buffer:
//! what each change lets through, and that a refused change leaves the filter alone.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// A writer into a shared buffer, one per event.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

/// Runs `f` with a subscriber filtered by a reloadable `initial`, returning what it wrote.
fn with_subscriber(initial: &str, f: impl FnOnce(&FilterControl, &Captured)) {
    let filter = EnvFilter::builder().parse(initial).unwrap();
    let (layer, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry().with(layer).with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone()),
    );
    let control = FilterControl::new(handle, initial.to_string());
    tracing::subscriber::with_default(subscriber, || f(&control, &out));
}

fn emit() {
    tracing::debug!(target: "access", "access debug");
    tracing::info!(target: "access", "access info");
    tracing::debug!(target: "other", "other debug");
    tracing::info!(target: "other", "other info");
}

/// The messages of `text`'s lines that `emit` wrote.
fn emitted(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            ["access debug", "access info", "other debug", "other info"]
                .into_iter()
                .find(|m| l.ends_with(m))
        })
        .collect()
}

#[test]
fn a_bare_level_raises_every_target_and_reset_goes_back() {
    with_subscriber("info", |control, out| {
        emit();
        assert_eq!(emitted(&out.take()), ["access info", "other info"]);
        assert_eq!(control.apply(false, "debug").unwrap(), "debug");
        emit();
        assert_eq!(
            emitted(&out.take()),
            ["access debug", "access info", "other debug", "other info"]
        );
        assert_eq!(control.apply(true, "").unwrap(), "info");
        emit();
        assert_eq!(emitted(&out.take()), ["access info", "other info"]);
    });
}

#[test]
fn a_target_clause_is_added_to_the_current_filter() {
    with_subscriber("info", |control, out| {
        assert_eq!(
            control.apply(false, "access=warn").unwrap(),
            "access=warn,info"
        );
        emit();
        assert_eq!(emitted(&out.take()), ["other info"]);
        // A later clause for the same target replaces the earlier one.
        assert_eq!(
            control.apply(false, "access=debug").unwrap(),
            "access=debug,info"
        );
        emit();
        assert_eq!(
            emitted(&out.take()),
            ["access debug", "access info", "other info"]
        );
        assert_eq!(
            control.apply(true, "other=debug").unwrap(),
            "other=debug,info"
        );
    });
}

#[test]
fn a_bad_clause_is_refused_by_name_and_changes_nothing() {
    with_subscriber("info", |control, out| {
        control.apply(false, "access=debug").unwrap();
        for (level, want) in [
            (
                "verbose",
                FilterError::NotALevel {
                    clause: "verbose".into(),
                },
            ),
            (
                "debug,,info",
                FilterError::EmptyClause {
                    level: "debug,,info".into(),
                },
            ),
        ] {
            assert_eq!(control.apply(false, level), Err(want), "{level}");
        }
        let bad = control.apply(false, "debug,access=loud").unwrap_err();
        assert!(
            matches!(&bad, FilterError::Invalid { clause, .. } if clause == "access=loud"),
            "{bad}"
        );
        assert!(
            bad.to_string()
                .starts_with("\"access=loud\" is not a valid target=level clause: "),
            "{bad}"
        );
        assert_eq!(control.current().unwrap(), "access=debug,info");
        emit();
        assert_eq!(
            emitted(&out.take()),
            ["access debug", "access info", "other info"]
        );
    });
}
