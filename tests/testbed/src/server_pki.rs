//! A throwaway root and a server certificate for one DNS name, for the gRPC servers tests
//! stand in for istiod with (xDS, CA): the tunnel under test trusts the root file and checks
//! the name (through `XDS_ADDRESS`'s host or `ALT_XDS_HOSTNAME`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::error::{Error, Result};

/// A server's certificate and key (PEM) and where its root was written.
pub struct ServerPki {
    pub cert_pem: String,
    pub key_pem: String,
    /// The root certificate, written to `<dir>/<file>` by [`ServerPki::generate`].
    pub root: PathBuf,
}

impl ServerPki {
    /// A new root (written to `dir/root_file`) and a leaf for `dns_name` signed by it.
    pub fn generate(dns_name: &str, dir: &Path, root_file: &str) -> Result<ServerPki> {
        let invalid = |what: &str, e: rcgen::Error| Error::Invalid(format!("{what}: {e}"));
        let ca_key = KeyPair::generate().map_err(|e| invalid("the root's key", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| invalid("the root's parameters", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| invalid("signing the root", e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(|e| invalid("the server's key", e))?;
        let cert = CertificateParams::new(vec![dns_name.to_string()])
            .map_err(|e| invalid(&format!("a certificate for {dns_name:?}"), e))?
            .signed_by(&key, &issuer)
            .map_err(|e| invalid("signing the server certificate", e))?;
        let root = dir.join(root_file);
        std::fs::write(&root, ca_cert.pem())
            .map_err(|e| Error::io(format!("writing {}", root.display()), e))?;
        Ok(ServerPki {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            root,
        })
    }
}
