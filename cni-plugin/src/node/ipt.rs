//! Reconciling chains we own with what `iptables-save` reports, through one
//! `iptables-restore --noflush` input.
//!
//! `--noflush` alone is not idempotent: a declared chain (`:ISTIO_OUTPUT - [0:0]`) is flushed
//! and refilled, but an `-A PREROUTING -j ISTIO_PRERT` jump in a builtin chain is appended
//! again on every run. So the jumps are planned from the saved state: added when missing,
//! duplicates and stray jumps into our chains deleted, and our chains in tables we no longer
//! want (raw after DNS capture is turned off) flushed and deleted. When the saved state already
//! is the desired one there is nothing to run at all.
//!
//! Rules are compared as text, so [`TableSpec`] rules must be written the way `iptables-save`
//! prints them (`-s 169.254.7.127/32`, `-p tcp -m tcp --dport 53`, `--to-ports`). Should another
//! iptables version print them differently, the state reads as "differs" and a reapply rewrites
//! the same rules: wasted work, never wrong rules.

use std::collections::BTreeMap;

/// One `-A <chain> <spec>` line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedRule {
    pub chain: String,
    pub spec: String,
}

/// One `*table` section of `iptables-save`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SavedTable {
    /// Every declared chain, builtin or not.
    pub chains: Vec<String>,
    pub rules: Vec<SavedRule>,
}

/// The parsed output of `iptables-save`, by table name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Saved {
    pub tables: BTreeMap<String, SavedTable>,
}

/// A line of `iptables-save` output this parser does not understand.
#[derive(Debug, thiserror::Error)]
#[error("line {line_no} of iptables-save output ({line:?}): {why}")]
pub struct SaveParseError {
    pub line_no: usize,
    pub line: String,
    pub why: &'static str,
}

pub(crate) fn parse_save(text: &str) -> Result<Saved, SaveParseError> {
    let mut saved = Saved::default();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |why| SaveParseError {
            line_no: i + 1,
            line: raw.to_string(),
            why,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                return Err(err("a table starts before the previous one's COMMIT"));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(err("table name missing"));
            }
            saved.tables.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        if line == "COMMIT" {
            if current.take().is_none() {
                return Err(err("COMMIT outside a table"));
            }
            continue;
        }
        let Some(table) = current.as_ref().and_then(|t| saved.tables.get_mut(t)) else {
            return Err(err("chain or rule outside a table"));
        };
        if let Some(decl) = line.strip_prefix(':') {
            let Some(chain) = decl.split_whitespace().next() else {
                return Err(err("chain name missing"));
            };
            table.chains.push(chain.to_string());
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let rest = rest.trim_start();
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            if chain.is_empty() {
                return Err(err("rule without a chain"));
            }
            table.rules.push(SavedRule {
                chain: chain.to_string(),
                spec: spec.trim().to_string(),
            });
        } else {
            return Err(err("neither a table, a chain, a rule nor COMMIT"));
        }
    }
    if current.is_some() {
        return Err(SaveParseError {
            line_no: text.lines().count(),
            line: String::new(),
            why: "output ends inside a table (no COMMIT)",
        });
    }
    Ok(saved)
}

/// What one table should hold of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableSpec {
    pub table: &'static str,
    /// Our chains in this table (created if missing, flushed and refilled when different).
    pub chains: Vec<&'static str>,
    /// `(builtin chain, our chain)`: exactly one `-A <builtin> -j <ours>` each.
    pub jumps: Vec<(&'static str, &'static str)>,
    /// `(our chain, spec)` in order, spelled as `iptables-save` prints them.
    pub rules: Vec<(&'static str, String)>,
}

/// Everything of ours: the chain names we own (anything so named, in any table, is ours to
/// flush and delete) and the tables that should hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub owned: &'static [&'static str],
    pub tables: Vec<TableSpec>,
}

impl Desired {
    /// The restore input that sets everything up in a namespace that has none of it yet.
    pub fn fresh_input(&self) -> String {
        self.plan(&Saved::default()).unwrap_or_default()
    }

    /// Whether `saved` already holds exactly the desired state.
    pub fn is_exact(&self, saved: &Saved) -> bool {
        self.plan(saved).is_none()
    }

    /// The `iptables-restore --noflush` input that turns `saved` into the desired state, or
    /// `None` when it already is.
    pub fn plan(&self, saved: &Saved) -> Option<String> {
        let empty_table = SavedTable::default();
        let mut names: Vec<&str> = self.tables.iter().map(|t| t.table).collect();
        for (name, table) in &saved.tables {
            if !names.contains(&name.as_str()) && self.touches(table) {
                names.push(name);
            }
        }
        let mut out = String::new();
        for name in names {
            let none = TableSpec {
                table: "",
                chains: Vec::new(),
                jumps: Vec::new(),
                rules: Vec::new(),
            };
            let want = self
                .tables
                .iter()
                .find(|t| t.table == name)
                .unwrap_or(&none);
            let have = saved.tables.get(name).unwrap_or(&empty_table);
            if let Some(section) = self.plan_table(name, want, have) {
                out.push_str(&section);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn is_owned(&self, chain: &str) -> bool {
        self.owned.contains(&chain)
    }

    /// Whether a saved table holds any chain of ours or any rule jumping into one.
    fn touches(&self, table: &SavedTable) -> bool {
        table.chains.iter().any(|c| self.is_owned(c))
            || table
                .rules
                .iter()
                .any(|r| jump_target(&r.spec).is_some_and(|t| self.is_owned(t)))
    }

    fn plan_table(&self, name: &str, want: &TableSpec, have: &SavedTable) -> Option<String> {
        // Our chains that exist but should not: flushed, then deleted after the jumps are gone.
        let stale: Vec<&str> = have
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| self.is_owned(c) && !want.chains.contains(c))
            .collect();
        // Jumps into our chains from chains that are not ours: keep the first copy of each
        // wanted one, delete every other.
        let mut deletes: Vec<&SavedRule> = Vec::new();
        let mut kept: Vec<(&str, &str)> = Vec::new();
        for rule in &have.rules {
            if self.is_owned(&rule.chain) {
                continue;
            }
            let Some(target) = jump_target(&rule.spec) else {
                continue;
            };
            if !self.is_owned(target) {
                continue;
            }
            let wanted = want
                .jumps
                .iter()
                .find(|(from, to)| *from == rule.chain && rule.spec == jump_spec(to));
            match wanted {
                Some(&(from, to)) if !kept.contains(&(from, to)) => kept.push((from, to)),
                _ => deletes.push(rule),
            }
        }
        let missing: Vec<(&str, &str)> = want
            .jumps
            .iter()
            .copied()
            .filter(|j| !kept.contains(j))
            .collect();
        let chains_match = want
            .chains
            .iter()
            .all(|c| have.chains.iter().any(|h| h == c))
            && want.chains.iter().all(|c| {
                let have_rules = have.rules.iter().filter(|r| r.chain == *c).map(|r| &r.spec);
                let want_rules = want.rules.iter().filter(|(rc, _)| rc == c).map(|(_, s)| s);
                have_rules.eq(want_rules)
            });
        if stale.is_empty() && deletes.is_empty() && missing.is_empty() && chains_match {
            return None;
        }

        let mut out = format!("*{name}\n");
        for chain in want.chains.iter().chain(stale.iter()) {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in deletes {
            out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
        }
        for chain in &stale {
            out.push_str(&format!("-X {chain}\n"));
        }
        for (from, to) in missing {
            out.push_str(&format!("-A {from} {}\n", jump_spec(to)));
        }
        for (chain, spec) in &want.rules {
            out.push_str(&format!("-A {chain} {spec}\n"));
        }
        out.push_str("COMMIT\n");
        Some(out)
    }
}

fn jump_spec(chain: &str) -> String {
    format!("-j {chain}")
}

/// The chain a rule jumps (`-j`) or goes (`-g`) to.
fn jump_target(spec: &str) -> Option<&str> {
    let mut tokens = spec.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "-j" || token == "-g" || token == "--jump" || token == "--goto" {
            return tokens.next();
        }
    }
    None
}

#[cfg(test)]
mod tests;
