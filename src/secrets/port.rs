//! The port the reconciler uses. Both backends implement exactly these semantics (KV v2's), and one
//! behavioural test suite runs against both.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::error::SecretsError;
use super::layout::SecretPath;
use super::types::{CreateOutcome, CustomMetadata, ReadOutcome, SecretData, Version};

/// A change to custom metadata: `Some` sets a key, `None` removes it; keys not named are kept.
pub type MetadataPatch = BTreeMap<String, Option<String>>;

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Where the store is, for log lines and errors (`http://…/admin`, `file:///var/lib/kiln/secrets`).
    fn describe(&self) -> String;

    /// Start-up readiness: credentials work and the store is what kiln expects (a KV v2 mount; a
    /// writable folder). Fails with the same typed errors as the operations.
    async fn check(&self) -> Result<(), SecretsError>;

    /// The current version and its custom metadata; see `ReadOutcome` for the three states.
    async fn read(&self, path: &SecretPath) -> Result<ReadOutcome, SecretsError>;

    /// Create-only write (`cas: 0`), then the custom metadata. Exactly one of several concurrent
    /// creators gets `Created`; every other one gets `AlreadyExists` with what the winner wrote (or,
    /// if the path was soft-deleted or destroyed, that state — never a second value).
    async fn create(
        &self,
        path: &SecretPath,
        data: &SecretData,
        custom_metadata: &CustomMetadata,
    ) -> Result<CreateOutcome, SecretsError>;

    /// Replace the value if the current version is still `expected` (check-and-set); returns the new
    /// version. A different current version is `SecretsError::CasConflict`.
    async fn overwrite(
        &self,
        path: &SecretPath,
        expected: Version,
        data: &SecretData,
    ) -> Result<Version, SecretsError>;

    /// Merge `patch` into the path's custom metadata. A path without metadata is `NotFound`.
    async fn patch_metadata(
        &self,
        path: &SecretPath,
        patch: &MetadataPatch,
    ) -> Result<(), SecretsError>;

    /// Soft-delete the current version (metadata and older versions stay; reads report it).
    async fn delete(&self, path: &SecretPath) -> Result<(), SecretsError>;

    /// Remove every version and the metadata. Afterwards the path reads `Absent`. Idempotent.
    async fn destroy(&self, path: &SecretPath) -> Result<(), SecretsError>;

    /// Every secret path below `dir` (recursively), sorted. An unknown folder is empty, not an error.
    async fn list(&self, dir: &SecretPath) -> Result<Vec<SecretPath>, SecretsError>;
}
