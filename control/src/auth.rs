//! Who is calling the control plane: a bearer token from a token file, or a client certificate.
//!
//! Node tunnels authenticate with a bearer token (as Istio's agents send their service-account
//! token); each token is bound to one node ([`token_file`] has the format). Anything holding a
//! mesh certificate may authenticate with it instead. The token file is re-read whenever it
//! changes on disk, so tokens rotate and move without a restart. Token values are secrets: they
//! are compared in constant time and never logged or echoed; a token is named by its label (or
//! its line number) instead.

mod token_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use nodetunnel::identity::Identity;
use token_file::TokenFile;
pub use token_file::{LineError, TokenFileError};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Presented a bearer token listed in the token file: named by its label (or line), acting
    /// for the node the file binds it to.
    Token { label: String, node: String },
    /// Presented a client certificate chained to the mesh root.
    Certificate { identity: Identity },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Token { label, node } => write!(f, "token {label:?} (node {node:?})"),
            Caller::Certificate { identity } => write!(f, "client certificate {identity}"),
        }
    }
}

/// Checks bearer tokens (from a file re-read on change) and client certificates.
#[derive(Debug)]
pub struct Authenticator {
    token_file: Option<PathBuf>,
    allow_client_certs: bool,
    tokens: Mutex<Option<Loaded>>,
}

/// One version of the token file as read: the tokens, or why they did not load. A failed parse
/// is kept too, so each bad version is logged once, not on every request.
#[derive(Debug)]
struct Loaded {
    stamp: FileStamp,
    tokens: Result<Arc<TokenFile>, TokenFileError>,
}

/// What identifies one version of the file: a rewrite changes the mtime or size, and
/// Kubernetes' atomic secret update (a symlink swap) changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Malformed(#[from] TokenFileError),
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

    /// Loads the token file now, so a bad one stops the control plane at start-up (with every
    /// bad line named) instead of refusing tunnels later. `Ok(None)` without a token file,
    /// else the number of tokens.
    pub fn check_token_file(&self) -> Result<Option<usize>, TokensError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        self.current_tokens(path).map(|tokens| Some(tokens.len()))
    }

    /// `Err` is the gRPC status to return: UNAUTHENTICATED naming the reason, or UNAVAILABLE
    /// when the token file cannot be read or does not load.
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
        // The caller is not told where our secrets live or what is wrong with them; the log
        // says (see `current_tokens`).
        let tokens = self.current_tokens(path).map_err(|e| match e {
            TokensError::Read { .. } => {
                Status::unavailable("the control plane cannot read its token file; try again later")
            }
            TokensError::Malformed(_) => {
                Status::unavailable("the control plane's token file does not load; try again later")
            }
        })?;
        match tokens.find(presented) {
            Some(binding) => Ok(Caller::Token {
                label: binding.label.clone(),
                node: binding.node.clone(),
            }),
            None => Err(Status::unauthenticated("bearer token not accepted")),
        }
    }

    /// The token file as it is on disk now, re-read when its stamp changed.
    ///
    /// An unreadable file is retried on every call (its stamp may not change when it becomes
    /// readable again); a malformed one is remembered by stamp and logged once. Neither falls
    /// back to the tokens loaded before: a deleted or rewritten file may mean tokens were
    /// revoked, and serving stale ones would keep them alive.
    fn current_tokens(&self, path: &Path) -> Result<Arc<TokenFile>, TokensError> {
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let read_failed = |source: std::io::Error| {
            tracing::error!(path = %path.display(), error = %source, "cannot read the token file; refusing token callers");
            TokensError::Read {
                path: path.to_path_buf(),
                source,
            }
        };
        let stamp = match std::fs::metadata(path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) => {
                *cache = None;
                return Err(read_failed(e));
            }
        };
        if let Some(cached) = cache.as_ref().filter(|c| c.stamp == stamp) {
            return cached.tokens.clone().map_err(TokensError::Malformed);
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                *cache = None;
                return Err(read_failed(e));
            }
        };
        let tokens = TokenFile::parse(&text, path).map(Arc::new);
        match &tokens {
            Ok(file) => {
                tracing::info!(path = %path.display(), tokens = file.len(), "loaded the token file")
            }
            Err(e) => {
                tracing::error!(error = %e, "the token file does not load; refusing token callers until it is fixed")
            }
        }
        *cache = Some(Loaded {
            stamp,
            tokens: tokens.clone(),
        });
        tokens.map_err(TokensError::Malformed)
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
