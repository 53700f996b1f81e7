//! How kiln trusts the PVE API's certificate: a CA file (PVE's own `pve-root-ca.pem`), a pinned
//! SHA-256 fingerprint of the node's certificate (what `pvenode cert info` prints), or — loudly —
//! nothing at all.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::error::ProxmoxError;

/// The trust decision, made once from `kiln.toml`.
pub enum Trust {
    CaPem(Vec<u8>),
    /// 32 bytes of SHA-256 over the DER certificate.
    Fingerprint([u8; 32]),
    Insecure,
}

/// Parses `AB:CD:…` (or plain hex) into the 32 bytes of a SHA-256 fingerprint.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], ProxmoxError> {
    let hexed: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hexed.trim())
        .map_err(|e| ProxmoxError::Config(format!("proxmox.fingerprint: {e}")))?;
    bytes.try_into().map_err(|_| {
        ProxmoxError::Config("proxmox.fingerprint: a SHA-256 fingerprint has 32 bytes".into())
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn client_config(trust: &Trust) -> Result<ClientConfig, ProxmoxError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxmoxError::Config(format!("TLS: {e}")))?;
    let config = match trust {
        Trust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            let mut found = 0;
            for item in pem::parse_many(pem)
                .map_err(|e| ProxmoxError::Config(format!("proxmox.ca_file: {e}")))?
            {
                if item.tag() == "CERTIFICATE" {
                    roots
                        .add(CertificateDer::from(item.contents().to_vec()))
                        .map_err(|e| ProxmoxError::Config(format!("proxmox.ca_file: {e}")))?;
                    found += 1;
                }
            }
            if found == 0 {
                return Err(ProxmoxError::Config(
                    "proxmox.ca_file holds no PEM certificate".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: *fp,
                provider: provider(),
                accept_any: false,
            }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: [0; 32],
                provider: provider(),
                accept_any: true,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts exactly one certificate, by its SHA-256, whatever its names or issuer: a PVE node's
/// self-signed certificate is trusted this way. Handshake signatures are still verified, so only
/// the holder of that certificate's key passes.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    accept_any: bool,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.accept_any || seen == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} is not the pinned one",
                hex::encode(seen)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let colon = "AB:".repeat(31) + "AB";
        assert_eq!(parse_fingerprint(&colon).unwrap(), [0xAB; 32]);
        assert_eq!(parse_fingerprint(&"ab".repeat(32)).unwrap(), [0xAB; 32]);
        assert!(parse_fingerprint("AB:CD").is_err());
    }
}
