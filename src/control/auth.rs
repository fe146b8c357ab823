//! SKELETON (helper-ca): who is calling the control plane.

use std::path::PathBuf;

use crate::identity::Identity;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Presented a bearer token listed in the token file (named by its line label if any).
    Token { label: String },
    /// Presented a client certificate chained to the mesh root.
    Certificate { identity: Identity },
}

/// Checks bearer tokens (from a file re-read on change) and client certificates.
#[derive(Debug)]
pub struct Authenticator {
    pub token_file: Option<PathBuf>,
    pub allow_client_certs: bool,
}

impl Authenticator {
    /// `Err` is the gRPC status to return (UNAUTHENTICATED with the reason).
    #[allow(clippy::result_large_err)]
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        let _ = request;
        unimplemented!("skeleton")
    }
}
