//! Process logging for every binary of the workspace: text (or JSON with `LOG_FORMAT=json`), always on stderr (stdout
//! belongs to protocols — the CNI plugin's result, the zds-agent tool's lines), colour only on a
//! terminal.
//!
//! The filter sits behind a reload layer, so a daemon can change it while running (the
//! tunnel's admin `/logging`, see [`filter`]); everything else about the output is fixed at
//! start.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub mod filter;
mod json;

pub use filter::{FilterControl, FilterError};

/// The running process's filter control, set by [`init`].
static CONTROL: OnceLock<FilterControl> = OnceLock::new();

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
    let initial = filter.to_string();
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json_requested() {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(json::JsonFormat)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
    };
    // A second init (a test calling it twice) keeps the first subscriber and its control.
    if installed.is_ok() {
        let _ = CONTROL.set(FilterControl::new(handle, initial));
    }
}

/// The process's filter control; `None` before [`init`] (or when another subscriber was
/// installed first).
pub fn control() -> Option<&'static FilterControl> {
    CONTROL.get()
}
