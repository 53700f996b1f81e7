//! How kiln trusts the PVE API's certificate: a CA file (PVE's own `pve-root-ca.pem`), a pinned
//! SHA-256 fingerprint of the node's certificate (what `pvenode cert info` prints), or — loudly —
//! nothing at all.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::error::ProxmoxError;
use crate::tls::PeerKeyOnly;

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
            .with_custom_certificate_verifier(PeerKeyOnly::pinned(*fp, provider()))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(PeerKeyOnly::any_certificate(provider()))
            .with_no_client_auth(),
    };
    Ok(config)
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
