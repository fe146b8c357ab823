//! Typed reads of environment variables. Every refusal names the variable, the value and why,
//! so a subsystem's parser never has to word an error itself.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;

/// The variables the daemon was started with; an empty value counts as unset, as in Istio.
/// It remembers every name it was asked for (a prefix family as `<prefix>*`), so a check can
/// tell which of the variables it was given the configuration never looked at.
pub(super) struct Env<'a> {
    vars: &'a HashMap<String, String>,
    consulted: RefCell<BTreeSet<String>>,
}

impl<'a> Env<'a> {
    pub(super) fn new(vars: &'a HashMap<String, String>) -> Env<'a> {
        Env {
            vars,
            consulted: RefCell::new(BTreeSet::new()),
        }
    }

    /// Every name looked up so far; `<prefix>*` for a family read by prefix.
    pub(super) fn consulted(&self) -> BTreeSet<String> {
        self.consulted.borrow().clone()
    }

    pub(super) fn get(&self, var: &str) -> Option<&'a str> {
        self.consulted.borrow_mut().insert(var.to_string());
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `var`'s value, or `default` when unset.
    pub(super) fn string_or(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    /// Every `<prefix><key>=<value>` with a non-empty key, as `key → value`.
    pub(super) fn with_prefix(&self, prefix: &str) -> impl Iterator<Item = (String, String)> + 'a {
        self.prefixed(prefix).filter(|(key, _)| !key.is_empty())
    }

    /// Every `<prefix><key>=<value>`, the key possibly empty (for callers that refuse it).
    pub(super) fn prefixed(&self, prefix: &str) -> impl Iterator<Item = (String, String)> + 'a {
        self.consulted.borrow_mut().insert(format!("{prefix}*"));
        let prefix = prefix.to_string();
        self.vars.iter().filter_map(move |(k, v)| {
            let key = k.strip_prefix(prefix.as_str())?;
            Some((key.to_string(), v.clone()))
        })
    }

    pub(super) fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(var, v, "expected true or false")),
            },
        }
    }

    pub(super) fn number(&self, var: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(var, v, "expected a non-negative whole number")),
        }
    }

    pub(super) fn duration(
        &self,
        var: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                invalid(var, v, "expected a duration such as 30s, 5m, 24h or 500ms")
            }),
        }
    }

    pub(super) fn socket_addr(
        &self,
        var: &'static str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(var, v, "expected <ip>:<port>, e.g. 127.0.0.1:15000")),
        }
    }

    /// `path` (the value of `var`), which must exist: a typo in a mounted file's name is
    /// caught at start, not on the first TLS handshake.
    pub(super) fn existing_file(
        &self,
        var: &'static str,
        path: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(path);
        if path.exists() {
            Ok(path)
        } else {
            Err(ConfigError::MissingFile {
                var,
                path: path.display().to_string(),
            })
        }
    }
}

/// The error for a value `var` cannot take.
pub(super) fn invalid(var: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses Go-style durations as Istio writes them: `500ms`, `30s`, `5m`, `24h`, `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Checked: `1e19s1e19s` would overflow `+=`, which panics.
        total = total.checked_add(Duration::try_from_secs_f64(value * unit_secs).ok()?)?;
    }
    Some(total)
}
