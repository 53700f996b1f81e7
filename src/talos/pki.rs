//! Talos-shaped X.509: the self-signed CAs of the secrets bundle and the leaf certificates kiln
//! mints from them, with the algorithms, subjects, key usages and validity Talos uses
//! (`siderolabs/crypto` x509, restated in TALOS-FACTS §2.2 and §3.2).
//!
//! Keys are generated with aws-lc-rs and signed with rcgen. Private keys are written with the PEM
//! labels Talos writes (`ED25519 PRIVATE KEY` PKCS#8, `EC PRIVATE KEY` SEC1, `RSA PRIVATE KEY`
//! PKCS#1) so `talosctl` reads a kiln bundle as one of its own.

use std::time::Duration;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use time::OffsetDateTime;

use crate::redact::Secret;

/// CA lifetime Talos uses for every bundle CA: 87600 h.
pub const CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);

/// Errors of key and certificate handling. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a {what} key failed")]
    KeyGeneration { what: &'static str },
    #[error("{what}: not a PEM block")]
    Pem { what: String },
    #[error("{what}: unsupported private key PEM label `{label}`")]
    KeyLabel { what: String, label: String },
    #[error("{what}: the private key does not parse as {algorithm:?}")]
    KeyParse {
        what: String,
        algorithm: KeyAlgorithm,
    },
    #[error("{what}: certificate does not parse: {reason}")]
    CertParse { what: String, reason: String },
    #[error("{what}: the certificate's public key does not belong to its private key")]
    KeyMismatch { what: String },
    #[error("{what}: signing failed: {source}")]
    Sign {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// The key algorithms Talos uses. Leaves follow their CA's algorithm, as `NewKeyPair` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ed25519,
    EcdsaP256,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// A private key in PEM, as Talos would write it. The PEM text is secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem {
    pem: Secret,
}

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKeyPem([redacted])")
    }
}

impl PrivateKeyPem {
    pub fn new(pem: impl Into<String>) -> Self {
        Self {
            pem: Secret::new(pem.into()),
        }
    }
    /// The PEM text; only for its rightful receiver (a machine config, the secret store).
    pub fn expose(&self) -> &str {
        self.pem.expose()
    }
    /// The DER inside, typed by label. `ED25519 PRIVATE KEY` (Talos's own label) holds plain
    /// PKCS#8, so it is relabelled here; rustls and rcgen only know the standard labels.
    pub fn to_der(&self, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
        let block = pem::parse(self.expose()).map_err(|_| PkiError::Pem {
            what: what.to_owned(),
        })?;
        let der = block.contents().to_vec();
        Ok(match block.tag() {
            "PRIVATE KEY" | "ED25519 PRIVATE KEY" => {
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
            }
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            other => {
                return Err(PkiError::KeyLabel {
                    what: what.to_owned(),
                    label: other.to_owned(),
                });
            }
        })
    }
    /// The same key as standard `PRIVATE KEY`/`EC PRIVATE KEY`/`RSA PRIVATE KEY` PEM, for rustls and
    /// other readers that refuse Talos's `ED25519 PRIVATE KEY` label.
    pub fn relabelled(&self) -> Result<PrivateKeyPem, PkiError> {
        let block = pem::parse(self.expose()).map_err(|_| PkiError::Pem {
            what: "private key".into(),
        })?;
        if block.tag() != "ED25519 PRIVATE KEY" {
            return Ok(self.clone());
        }
        Ok(PrivateKeyPem::new(pem_encode(
            "PRIVATE KEY",
            block.contents(),
        )))
    }
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A fresh key as (PEM the way Talos labels it, rcgen key pair to sign with).
pub(crate) fn generate_key(alg: KeyAlgorithm) -> Result<(PrivateKeyPem, KeyPair), PkiError> {
    let pem = match alg {
        KeyAlgorithm::Ed25519 => {
            let kp = Ed25519KeyPair::generate()
                .map_err(|_| PkiError::KeyGeneration { what: "Ed25519" })?;
            let der: Pkcs8V1Der<'static> = kp
                .as_der()
                .map_err(|_| PkiError::KeyGeneration { what: "Ed25519" })?;
            pem_encode("ED25519 PRIVATE KEY", der.as_ref())
        }
        KeyAlgorithm::EcdsaP256 => {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|_| {
                PkiError::KeyGeneration {
                    what: "ECDSA P-256",
                }
            })?;
            let der = kp
                .private_key()
                .as_der()
                .map_err(|_| PkiError::KeyGeneration {
                    what: "ECDSA P-256",
                })?;
            pem_encode("EC PRIVATE KEY", der.as_ref())
        }
    };
    let pem = PrivateKeyPem::new(pem);
    let pair = signing_key(&pem, alg, "new key")?;
    Ok((pem, pair))
}

fn signing_key(pem: &PrivateKeyPem, alg: KeyAlgorithm, what: &str) -> Result<KeyPair, PkiError> {
    let der = pem.to_der(what)?;
    KeyPair::from_der_and_sign_algo(&der, alg.rcgen()).map_err(|_| PkiError::KeyParse {
        what: what.to_owned(),
        algorithm: alg,
    })
}

/// A random positive serial below 2^128, as Go's `rand.Int(rand.Reader, 2^128)`.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}

/// A DN value encoded as Go's `pkix` does: PrintableString when the text allows, else UTF8String.
fn dn_value(text: &str) -> rcgen::DnValue {
    match rcgen::string::PrintableString::try_from(text) {
        Ok(p) => rcgen::DnValue::PrintableString(p),
        Err(_) => rcgen::DnValue::Utf8String(text.to_owned()),
    }
}

fn add(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: PrivateKeyPem,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

impl CertAndKey {
    /// rustls types for a client or server identity (Ed25519 keys relabelled).
    pub fn to_rustls(
        &self,
    ) -> Result<
        (
            Vec<rustls_pki_types::CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        PkiError,
    > {
        let certs = certs_from_pem(&self.cert_pem, "certificate")?;
        let key = self.key_pem.to_der("private key")?;
        Ok((certs, key))
    }
}

/// Every `CERTIFICATE` block of a PEM text as DER.
pub fn certs_from_pem(
    text: &str,
    what: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    let blocks = pem::parse_many(text).map_err(|_| PkiError::Pem {
        what: what.to_owned(),
    })?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| rustls_pki_types::CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// A self-signed CA as `NewSelfSignedCertificateAuthority` makes it: CA:TRUE, KeyUsage
/// CertSign+DigitalSignature, ExtKeyUsage ServerAuth+ClientAuth, a random 20-byte SubjectKeyId,
/// a random 128-bit serial, 87600 h from `now`, Subject = Issuer = `O=<organization>` (or empty).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CertificateAuthority {
    pair: CertAndKey,
    algorithm: KeyAlgorithm,
}

impl CertificateAuthority {
    pub fn generate(
        organization: Option<&str>,
        algorithm: KeyAlgorithm,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let (key_pem, key) = generate_key(algorithm)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = organization {
            dn.push(DnType::OrganizationName, dn_value(o));
        }
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = now;
        params.not_after = add(now, CA_VALIDITY);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut ski = vec![0u8; 20];
        rand::rng().fill_bytes(&mut ski);
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
        let what = organization.unwrap_or("CA");
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            what: what.to_owned(),
            source,
        })?;
        Ok(Self {
            pair: CertAndKey {
                cert_pem: cert.pem().replace("\r\n", "\n"),
                key_pem,
            },
            algorithm,
        })
    }

    /// Loads a CA from PEMs (ours or `talosctl`'s), checking the key matches the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: PrivateKeyPem, what: &str) -> Result<Self, PkiError> {
        let der = certs_from_pem(cert_pem, what)?.remove(0);
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::CertParse {
                what: what.to_owned(),
                reason: e.to_string(),
            })?;
        let oid = cert.public_key().algorithm.algorithm.to_id_string();
        let algorithm = match oid.as_str() {
            "1.3.101.112" => KeyAlgorithm::Ed25519,
            "1.2.840.10045.2.1" => KeyAlgorithm::EcdsaP256,
            other => {
                return Err(PkiError::CertParse {
                    what: what.to_owned(),
                    reason: format!("unsupported CA key algorithm {other}"),
                });
            }
        };
        let key = signing_key(&key_pem, algorithm, what)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch {
                what: what.to_owned(),
            });
        }
        Ok(Self {
            pair: CertAndKey {
                cert_pem: cert_pem.to_owned(),
                key_pem,
            },
            algorithm,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }
    pub fn key_pem(&self) -> &PrivateKeyPem {
        &self.pair.key_pem
    }
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    pub fn as_cert_and_key(&self) -> &CertAndKey {
        &self.pair
    }

    /// Issues a leaf with a fresh key of the CA's algorithm (Talos's `NewKeyPair`).
    pub fn issue(&self, leaf: LeafSpec<'_>) -> Result<CertAndKey, PkiError> {
        let what = "leaf certificate";
        let ca_key = signing_key(&self.pair.key_pem, self.algorithm, "CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.pair.cert_pem, ca_key).map_err(|source| {
            PkiError::Sign {
                what: "CA certificate".into(),
                source,
            }
        })?;
        let (key_pem, key) = generate_key(self.algorithm)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = leaf.common_name {
            dn.push(DnType::CommonName, dn_value(cn));
        }
        if let Some(o) = leaf.organization {
            dn.push(DnType::OrganizationName, dn_value(o));
        }
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.is_ca = IsCa::NoCa;
        params.key_usages = leaf.key_usages.to_vec();
        params.extended_key_usages = leaf.extended_key_usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = leaf
            .ip_sans
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(*ip))
            .collect();
        for name in leaf.dns_sans {
            let ia5 = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|source| {
                PkiError::Sign {
                    what: format!("DNS SAN `{name}`"),
                    source,
                }
            })?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(ia5));
        }
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| PkiError::Sign {
                what: what.to_owned(),
                source,
            })?;
        Ok(CertAndKey {
            cert_pem: cert.pem().replace("\r\n", "\n"),
            key_pem,
        })
    }
}

/// What a leaf certificate says about itself.
#[derive(Debug, Clone)]
pub struct LeafSpec<'a> {
    pub common_name: Option<&'a str>,
    /// Subject alternative names: IPs and DNS names (server certs only).
    pub ip_sans: &'a [std::net::IpAddr],
    pub dns_sans: &'a [String],
    pub organization: Option<&'a str>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_usages: &'a [KeyUsagePurpose],
    pub extended_key_usages: &'a [ExtendedKeyUsagePurpose],
}
