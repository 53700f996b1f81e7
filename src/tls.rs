//! The one certificate verifier kiln's clients share where a CA cannot vouch for the peer: a PVE
//! node's self-signed certificate pinned by its SHA-256, and a Talos node in maintenance mode (whose
//! certificate is made at boot and verifiable by nobody). Handshake signatures are always verified,
//! so the peer is at least proven to hold the key of the certificate it shows.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct PeerKeyOnly {
    /// `Some`: only the certificate with this SHA-256 passes. `None`: any certificate (insecure).
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PeerKeyOnly {
    pub fn pinned(sha256: [u8; 32], provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            pin: Some(sha256),
            provider,
        })
    }

    /// No check of the certificate itself: for peers nobody can vouch for.
    pub fn any_certificate(provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            pin: None,
            provider,
        })
    }
}

impl ServerCertVerifier for PeerKeyOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == pin {
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
