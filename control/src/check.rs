//! `nodetunnel-control check-config`: everything start-up loads (the mesh file, the token file,
//! the CA directory, the serving certificate's names), without binding or serving, and a report
//! of what would be served. Deployment manifests are checked with it (tests/manifests.rs): a
//! mounted file missing or a path misspelled fails here, with the error start-up would give.

use std::path::Path;

use nodetunnel::identity::LocalCa;
use nodetunnel::state::{load_str, Defaults, LoadError};
use serde_json::{json, Value};

use crate::auth::Authenticator;
use crate::mesh::{Mesh, ResourceType};
use crate::watch::WatchError;
use crate::{serving_sans, ControlError, ControlOptions};

/// Loads what [`crate::run`] loads, in the same order, and describes the result as JSON:
/// `listen` / `status_addr` (what will be bound), the mesh's resource counts, the number of
/// tokens, and where the CA comes from. Nothing is written: an empty `--ca-dir` is reported as
/// `generate` (start-up would write a new root into it) instead of being filled.
pub fn check(opts: &ControlOptions) -> Result<Value, ControlError> {
    let defaults = Defaults {
        trust_domain: opts.trust_domain.clone(),
        cluster_id: opts.cluster_id.clone(),
    };
    let mesh = load_mesh(&opts.mesh_file, &defaults)?;
    let tokens = Authenticator::new(opts.token_file.clone(), true).check_token_file()?;
    let ca = match &opts.ca_dir {
        None => json!({"source": "throwaway"}),
        Some(dir) if crate::dir_is_empty(dir)? => {
            json!({"source": "generate", "dir": dir.display().to_string()})
        }
        Some(dir) => {
            let ca = LocalCa::load(dir).map_err(|source| ControlError::LoadCa {
                dir: dir.clone(),
                source,
            })?;
            // Issuing the serving certificate checks the names (--tls-san) as start-up does.
            let sans = serving_sans(opts);
            ca.issue_serving_cert(&sans, crate::SERVING_CERT_TTL)
                .map_err(|source| ControlError::ServingCert {
                    sans: sans.clone(),
                    source,
                })?;
            json!({"source": "dir", "dir": dir.display().to_string(), "tls_sans": sans})
        }
    };
    Ok(json!({
        "listen": opts.listen.to_string(),
        "status_addr": opts.status_addr.to_string(),
        "mesh": {
            "file": opts.mesh_file.display().to_string(),
            "addresses": mesh.resources(ResourceType::Address).len(),
            "authorizations": mesh.resources(ResourceType::Authorization).len(),
        },
        "tokens": tokens,
        "ca": ca,
    }))
}

fn load_mesh(path: &Path, defaults: &Defaults) -> Result<Mesh, ControlError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        WatchError::Load(LoadError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let loaded = load_str(&text, path, defaults).map_err(WatchError::Load)?;
    Ok(Mesh::from_store(&loaded.store))
}
