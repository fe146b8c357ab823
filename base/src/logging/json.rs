//! `LOG_FORMAT=json`: one JSON object per event and line, in ztunnel's shape — `level`
//! (lower case), `time` (RFC 3339, UTC), `scope` (the target, e.g. `access`), `message`, then
//! every field of the event under its own name (`src.addr`, `bytes_sent`, ...), so log
//! pipelines written for ztunnel's JSON read ours unchanged.

use std::fmt;

use serde_json::{Map, Number, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter behind `LOG_FORMAT=json`.
pub struct JsonFormat;

/// Collects an event's fields into a JSON object, numbers and booleans kept as such.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0
            .insert(field.name().to_string(), Number::from(value).into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0
            .insert(field.name().to_string(), Number::from(value).into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::Bool(value));
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = render(event, &humantime_now());
        writeln!(writer, "{line}")
    }
}

/// The JSON object of one event at `time`.
fn render(event: &Event<'_>, time: &str) -> String {
    let meta = event.metadata();
    let mut fields = Fields(Map::new());
    event.record(&mut fields);
    let mut out = Map::new();
    out.insert(
        "level".into(),
        Value::String(meta.level().as_str().to_ascii_lowercase()),
    );
    out.insert("time".into(), Value::String(time.to_string()));
    out.insert("scope".into(), Value::String(meta.target().to_string()));
    if let Some(message) = fields.0.remove("message") {
        out.insert("message".into(), message);
    }
    out.extend(fields.0);
    Value::Object(out).to_string()
}

/// Now, as RFC 3339 in UTC with microseconds (the `time` of ztunnel's JSON lines).
fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::rfc3339::format(now.as_secs() as i64, Some(now.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use super::JsonFormat;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer, to read back what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An access-like event through the real fmt subscriber comes out as one JSON object per
    /// line with ztunnel's keys; dotted field names are kept whole, numbers stay numbers.
    #[test]
    fn events_are_one_json_object_per_line() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(target: "access", tracing::Level::INFO, src.addr = "10.0.0.1:4000", bytes_sent = 7u64, "connection complete");
            tracing::warn!(target: "access", reason = "a b", "connection failed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["scope"], "access");
        assert_eq!(lines[0]["message"], "connection complete");
        assert_eq!(lines[0]["src.addr"], "10.0.0.1:4000");
        assert_eq!(lines[0]["bytes_sent"], 7);
        assert!(lines[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["reason"], "a b");
    }
}
