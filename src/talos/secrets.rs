//! The Talos secrets bundle, generated natively the way `talosctl gen secrets` does for the
//! v1.7–v1.13 contracts (TALOS-FACTS §3), and its `secrets.yaml` form so an operator can hand it to
//! `talosctl` later.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::pki::{CertificateAuthority, KeyAlgorithm, PkiError, PrivateKeyPem, pem_encode};
use crate::redact::Secret;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("secrets bundle: {0}")]
    Pki(#[from] PkiError),
    #[error("secrets bundle: generating the RSA-4096 service-account key failed")]
    RsaGeneration,
    #[error("secrets bundle YAML does not parse: {0}")]
    Yaml(String),
    #[error("secrets bundle: `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// How Kubernetes encrypts Secrets at rest. `talosctl` emits secretbox for every contract kiln
/// supports; aescbc is accepted when reading an older operator-made bundle.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EncryptionSecret {
    Secretbox(Secret),
    Aescbc(Secret),
}

/// What `talosctl gen secrets` writes, held in memory with the secret parts redacted from `Debug`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SecretsBundle {
    /// Discovery cluster id (base64 URL encoding of 32 random bytes, as Talos ≤ v1.13 makes it).
    pub cluster_id: String,
    /// Discovery AES-256 key: base64 of 32 random bytes.
    pub cluster_secret: Secret,
    /// `<6>.<16>` Kubernetes bootstrap token (`cluster.token`).
    pub bootstrap_token: Secret,
    pub encryption: EncryptionSecret,
    /// `<6>.<16>` token workers present to trustd (`machine.token`).
    pub trustd_token: Secret,
    pub etcd_ca: CertificateAuthority,
    pub k8s_ca: CertificateAuthority,
    pub k8s_aggregator_ca: CertificateAuthority,
    /// RSA-4096 (`RSA PRIVATE KEY`, PKCS#1): the key that signs service-account tokens.
    pub service_account_key: PrivateKeyPem,
    /// The Talos API CA (Ed25519): signs node API certs and kiln's client certs.
    pub os_ca: CertificateAuthority,
}

const TOKEN_CHARSET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `len` characters of `[0-9a-z]`, rejection-sampled like Talos (bytes ≥ 252 dropped) so every
/// character is equally likely.
fn random_chars(len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let b: u8 = rng.random();
        if b < 252 {
            out.push(TOKEN_CHARSET[(b % 36) as usize] as char);
        }
    }
    out
}

/// A `<6>.<16>` token, the Kubernetes bootstrap-token format Talos also uses for trustd.
pub fn random_token() -> String {
    format!("{}.{}", random_chars(6), random_chars(16))
}

fn random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

fn is_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| TOKEN_CHARSET.contains(&b));
    matches!(s.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

/// Reads one DER TLV at the start of `der`: (tag, content, rest).
fn der_tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (its `privateKey` OCTET STRING).
/// aws-lc-rs exports PKCS#8 only; Talos writes `RSA PRIVATE KEY` (PKCS#1).
fn pkcs8_to_pkcs1(pkcs8: &[u8]) -> Option<Vec<u8>> {
    let (0x30, body, _) = der_tlv(pkcs8)? else {
        return None;
    };
    let (0x02, _, body) = der_tlv(body)? else {
        return None;
    };
    let (0x30, _, body) = der_tlv(body)? else {
        return None;
    };
    let (0x04, key, _) = der_tlv(body)? else {
        return None;
    };
    Some(key.to_vec())
}

/// A fresh RSA-4096 service-account key as `RSA PRIVATE KEY` PEM (about a second with aws-lc-rs).
pub fn generate_service_account_key() -> Result<PrivateKeyPem, BundleError> {
    let kp = RsaKeyPair::generate(KeySize::Rsa4096).map_err(|_| BundleError::RsaGeneration)?;
    let pkcs8: Pkcs8V1Der<'static> = kp.as_der().map_err(|_| BundleError::RsaGeneration)?;
    let pkcs1 = pkcs8_to_pkcs1(pkcs8.as_ref()).ok_or(BundleError::RsaGeneration)?;
    Ok(PrivateKeyPem::new(pem_encode("RSA PRIVATE KEY", &pkcs1)))
}

impl SecretsBundle {
    /// A new bundle with the clock now. Blocks for about a second (RSA-4096): call it from
    /// `spawn_blocking` in async code.
    pub fn generate() -> Result<Self, BundleError> {
        Self::generate_at(OffsetDateTime::now_utc())
    }

    /// A new bundle whose CAs start at `now` (Talos uses the bundle's clock for NotBefore).
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn generate_at(now: OffsetDateTime) -> Result<Self, BundleError> {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        Ok(Self {
            cluster_id: URL_SAFE.encode(random_32()),
            cluster_secret: Secret::new(STANDARD.encode(random_32())),
            bootstrap_token: Secret::new(random_token()),
            encryption: EncryptionSecret::Secretbox(Secret::new(STANDARD.encode(random_32()))),
            trustd_token: Secret::new(random_token()),
            etcd_ca: CertificateAuthority::generate(Some("etcd"), KeyAlgorithm::EcdsaP256, now)?,
            k8s_ca: CertificateAuthority::generate(
                Some("kubernetes"),
                KeyAlgorithm::EcdsaP256,
                now,
            )?,
            // Talos passes CommonName "front-proxy" but its CA constructor copies only the
            // Organization, so the aggregator CA's subject is empty; we match that.
            k8s_aggregator_ca: CertificateAuthority::generate(None, KeyAlgorithm::EcdsaP256, now)?,
            service_account_key: generate_service_account_key()?,
            os_ca: CertificateAuthority::generate(Some("talos"), KeyAlgorithm::Ed25519, now)?,
        })
    }

    /// `secrets.yaml` exactly in Talos's shape (lower-cased keys, base64 PEMs).
    pub fn to_yaml(&self) -> String {
        let ca = |c: &CertificateAuthority| CertYaml {
            crt: STANDARD.encode(c.cert_pem()),
            key: STANDARD.encode(c.key_pem().expose()),
        };
        let (secretbox, aescbc) = match &self.encryption {
            EncryptionSecret::Secretbox(s) => (Some(s.expose().to_owned()), None),
            EncryptionSecret::Aescbc(s) => (None, Some(s.expose().to_owned())),
        };
        let doc = BundleYaml {
            cluster: ClusterYaml {
                id: self.cluster_id.clone(),
                secret: self.cluster_secret.expose().to_owned(),
            },
            secrets: SecretsYaml {
                bootstraptoken: self.bootstrap_token.expose().to_owned(),
                secretboxencryptionsecret: secretbox,
                aescbcencryptionsecret: aescbc,
            },
            trustdinfo: TrustdYaml {
                token: self.trustd_token.expose().to_owned(),
            },
            certs: CertsYaml {
                etcd: ca(&self.etcd_ca),
                k8s: ca(&self.k8s_ca),
                k8saggregator: ca(&self.k8s_aggregator_ca),
                k8sserviceaccount: KeyYaml {
                    key: STANDARD.encode(self.service_account_key.expose()),
                },
                os: ca(&self.os_ca),
            },
        };
        serde_yaml::to_string(&doc).expect("plain strings serialise")
    }

    /// Reads a `secrets.yaml` (kiln's or `talosctl`'s) and checks it the way `Bundle.Validate`
    /// does, plus that every CA key matches its certificate.
    pub fn from_yaml(text: &str) -> Result<Self, BundleError> {
        let doc: BundleYaml = serde_yaml::from_str(text).map_err(|e: serde_yaml::Error| {
            let at = e.location();
            BundleError::Yaml(crate::spec::diagnostic::parse_error_without_values(
                &e.to_string(),
                at.as_ref().map(|l| l.line()),
                at.as_ref().map(|l| l.column()),
            ))
        })?;
        let b64 = |field: &'static str, v: &str| -> Result<String, BundleError> {
            let bytes = STANDARD.decode(v).map_err(|e| BundleError::Invalid {
                field,
                reason: format!("not base64: {e}"),
            })?;
            String::from_utf8(bytes).map_err(|_| BundleError::Invalid {
                field,
                reason: "not PEM text".into(),
            })
        };
        let ca = |field: &'static str, c: &CertYaml| -> Result<CertificateAuthority, BundleError> {
            let crt = b64(field, &c.crt)?;
            let key = PrivateKeyPem::new(b64(field, &c.key)?);
            Ok(CertificateAuthority::from_pem(&crt, key, field)?)
        };
        let token = |field: &'static str, v: &str| -> Result<Secret, BundleError> {
            if is_token(v) {
                Ok(Secret::new(v))
            } else {
                Err(BundleError::Invalid {
                    field,
                    reason: "not a <6>.<16> token of [0-9a-z]".into(),
                })
            }
        };
        let key32 = |field: &'static str, v: &str| -> Result<Secret, BundleError> {
            match STANDARD.decode(v) {
                Ok(b) if b.len() == 32 => Ok(Secret::new(v)),
                _ => Err(BundleError::Invalid {
                    field,
                    reason: "not base64 of 32 bytes".into(),
                }),
            }
        };
        if doc.cluster.id.is_empty() {
            return Err(BundleError::Invalid {
                field: "cluster.id",
                reason: "empty".into(),
            });
        }
        let encryption = match (
            &doc.secrets.secretboxencryptionsecret,
            &doc.secrets.aescbcencryptionsecret,
        ) {
            (Some(s), None) => {
                EncryptionSecret::Secretbox(key32("secrets.secretboxencryptionsecret", s)?)
            }
            (None, Some(s)) => {
                EncryptionSecret::Aescbc(key32("secrets.aescbcencryptionsecret", s)?)
            }
            _ => {
                return Err(BundleError::Invalid {
                    field: "secrets",
                    reason: "exactly one of secretboxencryptionsecret and aescbcencryptionsecret must be set".into(),
                });
            }
        };
        let sa = PrivateKeyPem::new(b64(
            "certs.k8sserviceaccount.key",
            &doc.certs.k8sserviceaccount.key,
        )?);
        sa.to_der("certs.k8sserviceaccount.key")?;
        Ok(Self {
            cluster_id: doc.cluster.id.clone(),
            cluster_secret: key32("cluster.secret", &doc.cluster.secret)?,
            bootstrap_token: token("secrets.bootstraptoken", &doc.secrets.bootstraptoken)?,
            encryption,
            trustd_token: token("trustdinfo.token", &doc.trustdinfo.token)?,
            etcd_ca: ca("certs.etcd", &doc.certs.etcd)?,
            k8s_ca: ca("certs.k8s", &doc.certs.k8s)?,
            k8s_aggregator_ca: ca("certs.k8saggregator", &doc.certs.k8saggregator)?,
            service_account_key: sa,
            os_ca: ca("certs.os", &doc.certs.os)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleYaml {
    cluster: ClusterYaml,
    secrets: SecretsYaml,
    trustdinfo: TrustdYaml,
    certs: CertsYaml,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterYaml {
    id: String,
    secret: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsYaml {
    bootstraptoken: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secretboxencryptionsecret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aescbcencryptionsecret: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustdYaml {
    token: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertsYaml {
    etcd: CertYaml,
    k8s: CertYaml,
    k8saggregator: CertYaml,
    k8sserviceaccount: KeyYaml,
    os: CertYaml,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertYaml {
    crt: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyYaml {
    key: String,
}

/// kiln's own identity for a cluster's lifetime (a random UUID v4 string), stored next to the
/// bundle as `cluster-uid` and written into every VM's ownership marker. Not part of Talos's
/// `secrets.yaml`, which stays exactly Talos's shape.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ClusterUid(String);

impl ClusterUid {
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Self(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// As text, and only a well-formed uid is read back (kiln's records keep it between restarts).
impl Serialize for ClusterUid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClusterUid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for ClusterUid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == 5
            && groups.iter().zip(lens).all(|(g, n)| {
                g.len() == n
                    && g.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("`{s}` is not a cluster uid (lower-case UUID)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_talos_shape() {
        for _ in 0..100 {
            assert!(is_token(&random_token()));
        }
        assert!(!is_token("ABCDEF.0123456789abcdef"));
        assert!(!is_token("abcdef0123456789abcdef"));
    }

    #[test]
    fn cluster_uid_round_trips() {
        let u = ClusterUid::generate();
        assert_eq!(u.as_str().parse::<ClusterUid>().unwrap(), u);
        assert!("not-a-uid".parse::<ClusterUid>().is_err());
    }

    #[test]
    fn der_walker_refuses_garbage() {
        assert!(pkcs8_to_pkcs1(&[0x30, 0x05, 0x02]).is_none());
        assert!(pkcs8_to_pkcs1(&[]).is_none());
    }
}
