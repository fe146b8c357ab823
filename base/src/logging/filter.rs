//! Changing the log filter of a running process, with ztunnel's `/logging` semantics: a
//! `level` of comma-separated clauses, each a bare level (`debug`: the default for every
//! target) or `target=level` (`access=warn`), is *added* to the current filter (a later
//! clause for the same target replaces the earlier one); `reset` first goes back to the
//! filter the process started with. A value with any bad clause changes nothing.

use tracing_subscriber::{reload, EnvFilter, Registry};

/// The levels a bare clause may name (ztunnel's list).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty clause in {level:?} (clauses are separated by single commas)")]
    EmptyClause { level: String },
    /// A bare word that is no level: `EnvFilter` would read it as "this target at trace",
    /// which is never what someone typing `verbose` meant, so it is refused as ztunnel does.
    #[error(
        "{clause:?} is not a level (one of off, error, warn, info, debug, trace) nor target=level"
    )]
    NotALevel { clause: String },
    #[error("{clause:?} is not a valid target=level clause: {reason}")]
    Invalid { clause: String, reason: String },
    #[error("the log filter cannot be changed: {0}")]
    Reload(String),
}

/// Reads and replaces the filter of the subscriber it was made for.
pub struct FilterControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter the process started with, which `reset` returns to.
    initial: String,
}

impl std::fmt::Debug for FilterControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterControl")
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

/// Checks every clause of `level` on its own, so the error names the bad one.
pub fn validate(level: &str) -> Result<(), FilterError> {
    for clause in level.split(',') {
        let clause = clause.trim();
        if clause.is_empty() {
            return Err(FilterError::EmptyClause {
                level: level.to_string(),
            });
        }
        if LEVELS.contains(&clause.to_ascii_lowercase().as_str()) {
            continue;
        }
        if !clause.contains('=') {
            return Err(FilterError::NotALevel {
                clause: clause.to_string(),
            });
        }
        EnvFilter::builder()
            .parse(clause)
            .map_err(|e| FilterError::Invalid {
                clause: clause.to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

impl FilterControl {
    /// A control over `handle`'s filter, which started as `initial`.
    pub fn new(handle: reload::Handle<EnvFilter, Registry>, initial: String) -> FilterControl {
        FilterControl { handle, initial }
    }

    /// The filter in effect, in `EnvFilter`'s own spelling (what `RUST_LOG` would take).
    pub fn current(&self) -> Result<String, FilterError> {
        self.handle
            .with_current(|f| f.to_string())
            .map_err(|e| FilterError::Reload(e.to_string()))
    }

    /// Adds `level` to the current filter (to the initial one when `reset`) and returns the
    /// filter now in effect. An empty `level` with `reset` just resets. Nothing changes when
    /// `level` has a bad clause.
    pub fn apply(&self, reset: bool, level: &str) -> Result<String, FilterError> {
        if !level.is_empty() {
            validate(level)?;
        }
        let level = level
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",");
        let base = if reset {
            self.initial.clone()
        } else {
            self.current()?
        };
        let combined = match (base.is_empty(), level.is_empty()) {
            (_, true) => base,
            (true, false) => level.to_string(),
            (false, false) => format!("{base},{level}"),
        };
        let filter = EnvFilter::builder()
            .parse(&combined)
            .map_err(|e| FilterError::Invalid {
                clause: combined.clone(),
                reason: e.to_string(),
            })?;
        self.handle
            .reload(filter)
            .map_err(|e| FilterError::Reload(e.to_string()))?;
        let now = self.current()?;
        tracing::info!(filter = %now, "log filter changed");
        Ok(now)
    }
}

#[cfg(test)]
mod tests;
