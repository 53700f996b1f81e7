//! TLS for the Talos API: ALPN `h2` (grpc-go refuses a peer without it), TLS ≥ 1.2, the aws-lc-rs provider
//! (Talos's OS CA and leaves are Ed25519), and the two client modes Talos has: insecure (maintenance: the
//! node's certificate is self-signed at boot, so there is nothing to verify it against) and mTLS.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::redact::Secret;

/// The ALPN protocol gRPC runs on.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no PEM certificate found in {what}")]
    NoCertificate { what: &'static str },
    #[error("cannot read PEM {what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What kiln presents to a configured node: the OS CA to verify the node with, and a client certificate
/// from that CA carrying `O=os:admin` (minted per call by the PKI module; kept in memory only).
#[derive(Clone)]
pub struct ClientIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl ClientIdentity {
    /// kiln's identity for a cluster: the OS CA to trust and a client certificate minted from it.
    pub fn from_minted(os_ca_pem: &str, cert: &crate::talos::credentials::ClientCert) -> Self {
        Self {
            ca_pem: os_ca_pem.to_owned(),
            cert_pem: cert.cert.cert_pem.clone(),
            key_pem: Secret::new(cert.cert.key_pem.expose()),
        }
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(
    pem_text: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| TlsSetupError::Pem {
        what,
        message: e.to_string(),
    })?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { what });
    }
    Ok(certs)
}

/// A private key in any label Talos writes. Talos labels its Ed25519 PKCS#8 keys
/// `ED25519 PRIVATE KEY`, which no PEM reader for rustls knows, so the label decides the DER form here.
pub fn key_from_pem(
    pem_text: &str,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let block = pem::parse(pem_text).map_err(|e| TlsSetupError::Pem {
        what,
        message: e.to_string(),
    })?;
    let der = block.contents().to_vec();
    match block.tag() {
        "PRIVATE KEY" | "ED25519 PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs8(der.into())),
        "RSA PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs1(der.into())),
        "EC PRIVATE KEY" => Ok(PrivateKeyDer::Sec1(der.into())),
        other => Err(TlsSetupError::Pem {
            what,
            message: format!("unsupported key label {other:?}"),
        }),
    }
}

fn base_client() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsSetupError>
{
    Ok(ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?)
}

/// Maintenance mode: the node's certificate is self-signed at boot and cannot be verified; Talos's own
/// client skips verification the same way (`--insecure`). Signatures are still checked, so the handshake
/// proves the peer holds the key of the certificate it showed.
pub fn insecure_client_config() -> Result<Arc<ClientConfig>, TlsSetupError> {
    maintenance_client(crate::tls::PeerKeyOnly::any_certificate(provider()))
}

/// Maintenance mode after the first handshake: only the certificate seen then (its SHA-256) passes, so
/// a re-dial within one client cannot reach another machine that took the address meanwhile.
pub fn pinned_client_config(sha256: [u8; 32]) -> Result<Arc<ClientConfig>, TlsSetupError> {
    maintenance_client(crate::tls::PeerKeyOnly::pinned(sha256, provider()))
}

/// A client without a certificate of its own, judging the node with `verifier`, speaking h2.
fn maintenance_client(
    verifier: Arc<crate::tls::PeerKeyOnly>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut cfg = base_client()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// Configured mode: verify the node against the OS CA and present kiln's client certificate.
pub fn mtls_client_config(identity: &ClientIdentity) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(&identity.ca_pem, "the OS CA")? {
        roots.add(ca)?;
    }
    let chain = certs_from_pem(&identity.cert_pem, "the client certificate")?;
    let key = key_from_pem(identity.key_pem.expose(), "the client key")?;
    let mut cfg = base_client()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}
