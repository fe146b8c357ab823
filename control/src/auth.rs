//! Who is calling the control plane: a bearer token from a token file, or a client certificate.
//!
//! Node tunnels authenticate with a bearer token (as Istio's agents send their service-account
//! token); anything holding a mesh certificate may authenticate with it instead. The token file
//! is re-read whenever it changes on disk, so tokens rotate without a restart. Token values are
//! secrets: they are compared in constant time and never logged or echoed; a token is named by
//! its label (or its line number) instead.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use nodetunnel::identity::Identity;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Presented a bearer token listed in the token file (named by its line label if any).
    Token { label: String },
    /// Presented a client certificate chained to the mesh root.
    Certificate { identity: Identity },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Token { label } => write!(f, "token {label:?}"),
            Caller::Certificate { identity } => write!(f, "client certificate {identity}"),
        }
    }
}

/// Checks bearer tokens (from a file re-read on change) and client certificates.
///
/// Token file format: one token per line, optionally followed by whitespace and a label naming
/// its holder (`<token> <label>`); blank lines and lines starting with `#` are ignored.
#[derive(Debug)]
pub struct Authenticator {
    token_file: Option<PathBuf>,
    allow_client_certs: bool,
    tokens: Mutex<Option<TokenFile>>,
}

/// The parsed token file and the on-disk state it was parsed from.
struct TokenFile {
    stamp: FileStamp,
    tokens: Vec<Token>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print token values.
        f.debug_struct("TokenFile")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

struct Token {
    value: Vec<u8>,
    label: String,
}

/// What identifies one version of the file: a rewrite changes the mtime or size, and
/// Kubernetes' atomic secret update (a symlink swap) changes the inode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl Authenticator {
    /// `token_file`: accepted bearer tokens (`None`: no token is accepted). `allow_client_certs`:
    /// whether a verified client certificate's SPIFFE identity authenticates a caller. The
    /// server's TLS config decides which certificates verify (its client CA root); tonic only
    /// exposes peer certificates that did.
    pub fn new(token_file: Option<PathBuf>, allow_client_certs: bool) -> Authenticator {
        Authenticator {
            token_file,
            allow_client_certs,
            tokens: Mutex::new(None),
        }
    }

    /// `Err` is the gRPC status to return: UNAUTHENTICATED naming the reason, or UNAVAILABLE
    /// when the token file cannot be read.
    ///
    /// A request carrying an `authorization` header is judged by its token alone, even if it
    /// also presented a certificate: a caller that sends a token means to use it, and quietly
    /// accepting the certificate instead would hide a broken token until the certificate
    /// expires.
    #[allow(clippy::result_large_err)]
    pub(crate) fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        if let Some(header) = request.metadata().get("authorization") {
            let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization header (expected `Bearer <token>`)",
                )
            })?;
            return self.check_token(token.as_bytes());
        }
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|chain| chain.first());
        match leaf {
            Some(leaf) if self.allow_client_certs => {
                let identity = spiffe_identity(leaf).ok_or_else(|| {
                    Status::unauthenticated("client certificate has no SPIFFE identity")
                })?;
                Ok(Caller::Certificate { identity })
            }
            Some(_) => Err(Status::unauthenticated(
                "no bearer token presented (client certificates are not accepted by this control plane)",
            )),
            None => Err(Status::unauthenticated(
                "no bearer token and no client certificate presented",
            )),
        }
    }

    #[allow(clippy::result_large_err)]
    fn check_token(&self, presented: &[u8]) -> Result<Caller, Status> {
        let Some(path) = &self.token_file else {
            return Err(Status::unauthenticated(
                "bearer token not accepted (this control plane accepts no tokens)",
            ));
        };
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(path).map(|m| FileStamp::of(&m));
        let fresh = match (&stamp, cache.as_ref()) {
            (Ok(stamp), Some(cached)) => cached.stamp == *stamp,
            _ => false,
        };
        if !fresh {
            let loaded = stamp.and_then(|stamp| {
                std::fs::read_to_string(path).map(|text| TokenFile {
                    stamp,
                    tokens: parse_tokens(&text),
                })
            });
            match loaded {
                Ok(file) => {
                    tracing::info!(path = %path.display(), tokens = file.tokens.len(), "loaded the token file");
                    *cache = Some(file);
                }
                Err(e) => {
                    // Refuse rather than keep serving stale tokens: a deleted file may mean
                    // every token was revoked.
                    tracing::error!(path = %path.display(), error = %e, "cannot read the token file; refusing token callers");
                    *cache = None;
                    return Err(Status::unavailable(
                        "the control plane cannot read its token file; try again later",
                    ));
                }
            }
        }
        let tokens = cache.as_ref().map(|f| f.tokens.as_slice()).unwrap_or(&[]);
        // Compare against every token without stopping early, so timing tells nothing about
        // which token (or how much of one) matched.
        let mut found = None;
        for token in tokens {
            if constant_time_eq(&token.value, presented) && found.is_none() {
                found = Some(token.label.clone());
            }
        }
        match found {
            Some(label) => Ok(Caller::Token { label }),
            None => Err(Status::unauthenticated("bearer token not accepted")),
        }
    }
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }
}

/// `Bearer <token>` (scheme case-insensitive, RFC 6750) → the token.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

fn parse_tokens(text: &str) -> Vec<Token> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut words = line.split_whitespace();
            let value = words.next()?.as_bytes().to_vec();
            let label = words.collect::<Vec<_>>().join(" ");
            let label = if label.is_empty() {
                format!("line {}", index + 1)
            } else {
                label
            };
            Some(Token { value, label })
        })
        .collect()
}

/// Equality whose running time depends only on the lengths, not on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The first URI SAN of `cert` that is a workload SPIFFE identity.
fn spiffe_identity(cert: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
