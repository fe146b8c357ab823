//! `FAKE_CA`, `LOCAL_CA_DIR` or `CA_ADDRESS`: where workload certificates come from, and
//! `SECRET_TTL`, how long they live.

use std::path::PathBuf;
use std::time::Duration;

use super::env::Env;
use super::grpc::{default_istiod_address, grpc_target, GrpcVars};
use super::ConfigError;
use crate::grpc::GrpcTarget;

/// Where workload certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CaSource {
    /// The built-in, public test root (`FAKE_CA=true`), shared by every FAKE_CA tunnel.
    Fake,
    /// A CA loaded from Istio's plug-in CA file names in a directory (`LOCAL_CA_DIR`).
    LocalDir(PathBuf),
    /// An Istio-compatible CA over gRPC (`CA_ADDRESS`, `CA_ROOT_CA`, `CA_AUTH_TOKEN`).
    Remote(GrpcTarget),
}

/// Certificates: their source and lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaConfig {
    pub source: CaSource,
    /// `SECRET_TTL`: lifetime of issued workload certificates.
    pub secret_ttl: Duration,
}

const CA_VARS: GrpcVars = GrpcVars {
    address: "CA_ADDRESS",
    root_ca: "CA_ROOT_CA",
    auth_token: "CA_AUTH_TOKEN",
    header_prefix: "CA_HEADER_",
    alt_hostname: "ALT_CA_HOSTNAME",
};

impl CaConfig {
    /// Exactly one certificate source; `cluster_id` goes to a remote CA with every request.
    pub(super) fn from_env(env: &Env<'_>, cluster_id: &str) -> Result<CaConfig, ConfigError> {
        let fake_ca = env.bool("FAKE_CA", false)?;
        let source = match (fake_ca, env.get("LOCAL_CA_DIR"), env.get("CA_ADDRESS")) {
            (false, None, Some(address)) => {
                CaSource::Remote(grpc_target(env, &CA_VARS, address, cluster_id)?)
            }
            (true, None, None) => CaSource::Fake,
            (false, Some(dir), None) => CaSource::LocalDir(PathBuf::from(dir)),
            (false, None, None) => match default_istiod_address(env) {
                Some(address) => CaSource::Remote(grpc_target(env, &CA_VARS, address, cluster_id)?),
                None => return Err(ConfigError::NoCertificateSource),
            },
            (fake, dir, address) => {
                let set: Vec<&str> = [
                    ("FAKE_CA=true", fake),
                    ("LOCAL_CA_DIR", dir.is_some()),
                    ("CA_ADDRESS", address.is_some()),
                ]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| *name)
                .collect();
                return Err(ConfigError::ConflictingCertificateSources(
                    set.join(" and "),
                ));
            }
        };
        Ok(CaConfig {
            source,
            secret_ttl: env.duration("SECRET_TTL", Duration::from_secs(24 * 3600))?,
        })
    }
}
