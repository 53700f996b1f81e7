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
mod types;
mod vault;

pub use decommission::{DecommissionReport, decommission};
pub use error::SecretsError;
pub use file::FileStore;
pub use layout::{
    Prefix, SecretPath, SecretPaths, bundle_keys, kubeconfig_keys, meta_keys, shared_records,
    talos_keys,
};
pub use port::{MetadataPatch, SecretStore};
pub use types::{
    CreateOutcome, CustomMetadata, Gone, ReadOutcome, SecretData, Stored, Version, secret_data,
};
pub use vault::{AuthStats, RetryPolicy, VaultAuth, VaultSettings, VaultStore};

use std::path::Path;
use std::sync::Arc;

use crate::config::{SecretsBackend, SecretsConfig};

/// The store `kiln.toml` asks for, and for Vault the task that keeps its token alive while kiln is
/// idle (stopped when this is dropped). No request is made here: call `check` at start-up and treat
/// its error like any other store error (Vault may come up after kiln).
pub struct OpenedStore {
    pub store: Arc<dyn SecretStore>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for OpenedStore {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

/// `[ha]`: asked before every write request a store sends. A port-level gate is asked once per
/// operation, but one operation can be several requests (a created value, then its custom
/// metadata; a retry after a pause): each must still come from the leader when it is sent.
pub type WriteGate = Arc<dyn Fn(&'static str) -> Result<(), SecretsError> + Send + Sync>;

/// Opens the configured backend; the file store lives in `state_dir/secrets`. Needs a Tokio runtime
/// (the Vault token keeper is a task).
pub fn open(cfg: &SecretsConfig, state_dir: &Path) -> Result<OpenedStore, SecretsError> {
    open_gated(cfg, state_dir, None)
}

/// As [`open`]; the Vault backend asks `gate` before each write request. The file store needs no
/// such gate: `[ha]` refuses it.
pub fn open_gated(
    cfg: &SecretsConfig,
    state_dir: &Path,
    gate: Option<WriteGate>,
) -> Result<OpenedStore, SecretsError> {
    Ok(match cfg.backend {
        SecretsBackend::Vault => {
            let mut vault = VaultStore::new(VaultSettings::from_config(cfg)?)?;
            if let Some(g) = gate {
                vault = vault.with_write_gate(g);
            }
            let vault = Arc::new(vault);
            let keeper = vault.keep_token_alive();
            OpenedStore {
                store: vault,
                keeper: Some(keeper),
            }
        }
        SecretsBackend::File => OpenedStore {
            store: Arc::new(FileStore::open(state_dir.join("secrets"))?),
            keeper: None,
        },
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
