//! The `certificates` section of `/config_dump`, in ztunnel's shape (what `istioctl
//! ztunnel-config certificates` decodes): per identity its state (`Initializing`,
//! `Unavailable: <error>`, `Available`), the chain it presents (leaf, then intermediates) and
//! the roots it trusts, each certificate as its base64-encoded PEM, decimal serial number and
//! RFC 3339 validity (seconds, UTC, `Z`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{certs_pem, CertState, SecretManager};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertsDump {
    identity: String,
    state: String,
    cert_chain: Vec<CertDump>,
    root_certs: Vec<CertDump>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDump {
    /// Base64 of the PEM text, as ztunnel writes it.
    pem: String,
    serial_number: String,
    valid_from: String,
    expiration_time: String,
}

/// Every identity the manager holds a slot for, sorted by identity.
pub fn certificates(manager: &SecretManager) -> Vec<CertsDump> {
    manager
        .certificate_states()
        .into_iter()
        .map(|(id, state)| {
            let (state, cert_chain, root_certs) = match state {
                CertState::Initializing => ("Initializing".to_string(), vec![], vec![]),
                CertState::Unavailable(error) => (format!("Unavailable: {error}"), vec![], vec![]),
                CertState::Available(cert) => (
                    "Available".to_string(),
                    cert.chain.iter().map(certificate).collect(),
                    cert.root_certs.iter().map(certificate).collect(),
                ),
            };
            CertsDump {
                identity: id.to_string(),
                state,
                cert_chain,
                root_certs,
            }
        })
        .collect()
}

/// One certificate. Every certificate here was parsed when it was accepted; one that fails to
/// parse now still shows its PEM, with the fields it could not give left empty (istioctl then
/// shows it as not valid) rather than failing the whole dump.
fn certificate(der: &CertificateDer<'_>) -> CertDump {
    let pem = STANDARD.encode(certs_pem(std::slice::from_ref(der)));
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => {
            let validity = cert.validity();
            CertDump {
                pem,
                serial_number: cert.tbs_certificate.serial.to_string(),
                valid_from: rfc3339(validity.not_before.timestamp()),
                expiration_time: rfc3339(validity.not_after.timestamp()),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "a cached certificate does not parse; dumping its PEM only");
            CertDump {
                pem,
                ..CertDump::default()
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (times before 1970 clamp to it).
fn rfc3339(unix_seconds: i64) -> String {
    nodetunnel_base::rfc3339::format(unix_seconds, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }
}
