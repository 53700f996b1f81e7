//! Talos: secrets bundle, PKI, machine configs per contract, talosconfig; `grpc`: the wire client.

pub mod config;
pub mod credentials;
pub mod grpc;
pub mod pki;
pub mod secrets;

pub use pki::{CertAndKey, CertificateAuthority, KeyAlgorithm, PkiError, PrivateKeyPem};
pub use secrets::{BundleError, ClusterUid, EncryptionSecret, SecretsBundle};
