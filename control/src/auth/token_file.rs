//! The token file: which bearer tokens the control plane accepts, and the node each one belongs
//! to.
//!
//! One token per line, then the node it is bound to, then an optional free-text label naming
//! its holder; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # <token> node=<node-name> [label]
//! 3f9a…c1 node=worker-1 tunnel on worker-1
//! 77be…0d node=worker-2
//! ```
//!
//! A token may obtain certificates only for identities of workloads scheduled on its node, as
//! istiod lets a ztunnel impersonate only its own node's pods; so every token must name one.
//! The format before node binding (`<token> [label]`) is refused with the line and the fix, not
//! guessed at: its tokens could act for any node, and reading its label as a node (or loading
//! it as a token that silently gets no certificates) would turn an upgrade into a mesh that
//! half works. A file with any bad line does not load at all (see [`TokenFileError`]).
//!
//! Token values never leave this module: they are kept only as SHA-256 digests and are never
//! printed; a token is named by its label (or its line number).

use std::fmt;
use std::path::{Path, PathBuf};

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// `node=`: the one field after the token.
const NODE_FIELD: &str = "node=";

/// The accepted tokens of one version of the file.
pub(crate) struct TokenFile {
    tokens: Vec<Token>,
}

struct Token {
    /// SHA-256 of the value. Comparing fixed-length digests keeps both the content and the
    /// length of accepted tokens out of the comparison's timing.
    digest: [u8; 32],
    binding: Binding,
}

/// Who a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    /// The node whose workloads the token may obtain certificates for.
    pub node: String,
    /// The label after the node, or `line <n>` when there is none.
    pub label: String,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests are not secrets the way values are, but there is no reason to print them.
        f.debug_struct("TokenFile")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// Why a token file does not load: every bad line, each with its number and the reason. The
/// reasons never quote the line (it holds a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TokenFileError {
    pub path: PathBuf,
    /// (1-based line number, why), in file order.
    pub lines: Vec<(usize, LineError)>,
}

impl TokenFileError {
    fn describe(&self) -> String {
        let lines: Vec<String> = self
            .lines
            .iter()
            .map(|(line, why)| format!("{}:{line}: {why}", self.path.display()))
            .collect();
        lines.join("; ")
    }
}

/// What is wrong with one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error(
        "the token names no node: write `<token> node=<node-name> [label]` (the format before \
         node binding, `<token> [label]`, is no longer accepted: a token may only act for the \
         node it names)"
    )]
    NoNode,
    #[error("`node=<node-name>` must come right after the token, before the label")]
    NotANodeField,
    #[error("`node=` is empty: name the node this token's tunnel runs on")]
    EmptyNode,
    #[error("the line starts with `node=`: the token is missing before it")]
    MissingToken,
    #[error("the same token is on line {first}: a token belongs to exactly one node")]
    Duplicate { first: usize },
}

impl TokenFile {
    /// Parses the whole file; any bad line fails it (see the module docs).
    pub(crate) fn parse(text: &str, path: &Path) -> Result<TokenFile, TokenFileError> {
        let mut tokens = Vec::new();
        let mut first_line_of: Vec<usize> = Vec::new();
        let mut bad = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let token = match parse_line(line, number) {
                Ok(token) => token,
                Err(why) => {
                    bad.push((number, why));
                    continue;
                }
            };
            // A load-time check among our own tokens: nothing a caller can time.
            if let Some(i) = tokens.iter().position(|t: &Token| t.digest == token.digest) {
                bad.push((
                    number,
                    LineError::Duplicate {
                        first: first_line_of[i],
                    },
                ));
                continue;
            }
            tokens.push(token);
            first_line_of.push(number);
        }
        if bad.is_empty() {
            Ok(TokenFile { tokens })
        } else {
            Err(TokenFileError {
                path: path.to_path_buf(),
                lines: bad,
            })
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The binding of the token equal to `presented`, if any.
    ///
    /// Every token is compared, whatever matched before, with a comparison whose time does not
    /// depend on the bytes; the match is picked without branching on it. So the time taken
    /// says nothing about which token matched or how close a guess came.
    pub(crate) fn find(&self, presented: &[u8]) -> Option<&Binding> {
        let presented = digest(presented);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, token) in self.tokens.iter().enumerate() {
            let equal = token.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), equal & !found);
            found |= equal;
        }
        bool::from(found)
            .then(|| usize::try_from(index).ok())
            .flatten()
            .and_then(|i| self.tokens.get(i))
            .map(|token| &token.binding)
    }
}

/// `<token> node=<node> [label…]` (already trimmed, not blank, not a comment).
fn parse_line(line: &str, number: usize) -> Result<Token, LineError> {
    let mut words = line.split_whitespace();
    let value = words.next().ok_or(LineError::NoNode)?;
    if value.starts_with(NODE_FIELD) {
        return Err(LineError::MissingToken);
    }
    let field = words.next().ok_or(LineError::NoNode)?;
    let Some(node) = field.strip_prefix(NODE_FIELD) else {
        // `node=` further along is a misplaced binding; none at all is the old format.
        return Err(if words.any(|w| w.starts_with(NODE_FIELD)) {
            LineError::NotANodeField
        } else {
            LineError::NoNode
        });
    };
    if node.is_empty() {
        return Err(LineError::EmptyNode);
    }
    let label = words.collect::<Vec<_>>().join(" ");
    let label = if label.is_empty() {
        format!("line {number}")
    } else {
        label
    };
    Ok(Token {
        digest: digest(value.as_bytes()),
        binding: Binding {
            node: node.to_string(),
            label,
        },
    })
}

fn digest(value: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests;
