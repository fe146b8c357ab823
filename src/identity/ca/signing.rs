//! What the CA issues: workload certificates signed from CSRs (the identity is the caller's,
//! never the CSR's) and TLS serving certificates under the mesh's own root.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::{certs_pem, CaError, LocalCa, ServingCert, CLOCK_SKEW};
use crate::identity::Identity;

impl LocalCa {
    /// Signs `csr_der` for `identity`, valid from one minute ago for `ttl`.
    ///
    /// Only the CSR's public key (and its self-signature) is used: the subject and SANs it asks
    /// for are ignored, because the caller has already decided which identity the requester may
    /// hold. Returns leaf, intermediates, root — Istio's `cert_chain` order.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let now = SystemTime::now();
        let not_after = not_after(now, ttl)?;
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(CaError::BadCsr)?;
        let sign_err = |source| CaError::Sign {
            identity: identity.to_string(),
            source,
        };
        let uri = identity.to_string().try_into().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; rcgen then marks the SAN extension critical (RFC 5280).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(sign_err)?;

        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.chain_root.clone());
        Ok(chain)
    }

    /// A TLS server certificate for a service that workloads reach over the mesh's own PKI
    /// (the control plane): clients verify it with the same `root-cert.pem` they already trust
    /// for workload certificates, so no second PKI has to be distributed.
    ///
    /// Each entry of `sans` becomes an IP address SAN if it parses as one, else a DNS name;
    /// the first also becomes the subject CN for humans reading the certificate. The key is a
    /// fresh P-256 key. The chain is the leaf and the intermediates, never the root: clients
    /// have it, and a server sending it would only hide a client trusting the wrong root.
    pub fn issue_serving_cert(
        &self,
        sans: &[String],
        ttl: Duration,
    ) -> Result<ServingCert, CaError> {
        let now = SystemTime::now();
        let not_after = not_after(now, ttl)?;
        let Some(first) = sans.first() else {
            return Err(CaError::BadSan {
                san: String::new(),
                reason: "a serving certificate needs at least one DNS name or IP address".into(),
            });
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|san| serving_san(san))
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let sign_err = |source| CaError::Sign {
            identity: format!("serving certificate for {}", sans.join(", ")),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(ServingCert {
            cert_chain_pem: certs_pem(&chain),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `now + ttl`, refused when `ttl` is zero or the end lies past 9999-12-31 (X.509's last
/// representable time): beyond it `SystemTime` arithmetic and the conversion rcgen does panic,
/// and `ttl` can come from a request (`validity_duration`) or a variable (`SECRET_TTL`).
fn not_after(now: SystemTime, ttl: Duration) -> Result<SystemTime, CaError> {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    now.checked_add(ttl)
        .filter(|end| {
            !ttl.is_zero()
                && end
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .is_ok_and(|since| since <= LAST)
        })
        .ok_or(CaError::BadTtl(ttl))
}

/// An IP address SAN if `san` parses as one, else a DNS name (which rcgen checks is IA5).
fn serving_san(san: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if san.is_empty() || san.contains(char::is_whitespace) {
        return Err(CaError::BadSan {
            san: san.to_string(),
            reason: "neither an IP address nor a DNS name".into(),
        });
    }
    let name = san.try_into().map_err(|e: rcgen::Error| CaError::BadSan {
        san: san.to_string(),
        reason: e.to_string(),
    })?;
    Ok(SanType::DnsName(name))
}

/// A positive random serial of 16 bytes (RFC 5280 allows up to 20).
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the encoding stays 16 bytes
    SerialNumber::from_slice(&bytes)
}
