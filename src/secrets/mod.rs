//! The secret store (DESIGN.md §5): the `SecretStore` port the reconciler uses, its Vault/OpenBao
//! KV v2 backend and the local file store, the path layout and keys, and decommission.
//!
//! Semantics are KV v2's in both backends: versions, create-only writes with `cas: 0`, check-and-set
//! overwrites, custom metadata that is never secret, soft delete and destroy. A read distinguishes
//! "never written" from "written, but the current version is deleted or destroyed": only the first
//! lets kiln mint a new bundle.

mod decommission;
mod error;
mod file;
mod layout;
mod port;
mod rotation;
mod types;
mod vault;

pub use decommission::{DecommissionReport, decommission};
pub use error::SecretsError;
pub use file::FileStore;
pub use layout::{
    Prefix, SecretPath, SecretPaths, bundle_keys, kubeconfig_keys, meta_keys, talos_keys,
};
pub use port::{MetadataPatch, SecretStore};
pub use rotation::{BadExpiry, CREDENTIAL_LIFETIME, Rotation, expires_at, rotation};
pub use types::{
    CreateOutcome, CustomMetadata, Gone, ReadOutcome, SecretData, Stored, Version, secret_data,
};
pub use vault::{AuthStats, RetryPolicy, VaultAuth, VaultSettings, VaultStore};

use std::path::Path;
use std::sync::Arc;

use crate::config::{SecretsBackend, SecretsConfig};

/// The store `kiln.toml` asks for. The file store lives in `state_dir/secrets`.
pub fn from_config(
    cfg: &SecretsConfig,
    state_dir: &Path,
) -> Result<Arc<dyn SecretStore>, SecretsError> {
    Ok(match cfg.backend {
        SecretsBackend::Vault => Arc::new(VaultStore::new(VaultSettings::from_config(cfg)?)?),
        SecretsBackend::File => Arc::new(FileStore::open(state_dir.join("secrets"))?),
    })
}

/// The bundle's value and custom metadata: `cluster-uid` is a key of the bundle and mirrored in the
/// metadata, so a metadata-only read (which never returns values) identifies the cluster incarnation.
pub fn bundle_record(cluster_uid: &str, mut parts: SecretData) -> (SecretData, CustomMetadata) {
    parts.insert(
        bundle_keys::CLUSTER_UID.to_owned(),
        crate::redact::Secret::new(cluster_uid),
    );
    let meta = CustomMetadata::from([(meta_keys::CLUSTER_UID.to_owned(), cluster_uid.to_owned())]);
    (parts, meta)
}
