//! Process logging for every binary of the workspace: text (or JSON with `LOG_FORMAT=json`), always on stderr (stdout
//! belongs to protocols — the CNI plugin's result, the zds-agent tool's lines), colour only on a
//! terminal.

use tracing_subscriber::EnvFilter;

mod json;

/// `LOG_FORMAT=json` selects one JSON object per line (ztunnel's variable and shape); anything
/// else, or unset, keeps the text format.
fn json_requested() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json")
}

/// Installs the global subscriber. `filter` is the binary's own setting (e.g. the CNI agent's
/// `LOG_LEVEL`); `None` reads `RUST_LOG`. A missing or unparsable filter means `info`, so a
/// typo in a log setting never stops a daemon.
pub fn init(filter: Option<&str>) {
    let filter = match filter {
        Some(directives) => EnvFilter::try_new(directives).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_requested() {
        builder.event_format(json::JsonFormat).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
