//! What the store hands back. Values are `Secret`s so no `Debug` of a result can leak them; custom
//! metadata is deliberately not secret (KV v2 shows it to anyone who may list).

use std::collections::BTreeMap;

use crate::redact::Secret;

use super::layout::meta_keys;

/// The key/value pairs of one secret version.
pub type SecretData = BTreeMap<String, Secret>;
/// KV v2 custom metadata: plain strings, never secret.
pub type CustomMetadata = BTreeMap<String, String>;

/// A KV v2 version number; the first write of a path is version 1.
pub type Version = u64;

/// What a read found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// No metadata at all: nothing was ever written here (or it was destroyed with its metadata).
    /// The only state in which kiln may mint a new bundle.
    Absent,
    Present(Stored),
    /// Metadata exists but the current version cannot be read. Never "absent": a bundle that was
    /// soft-deleted must be undeleted or destroyed by a human, never silently replaced.
    DeletedOrDestroyed {
        current_version: Version,
        state: Gone,
        custom_metadata: CustomMetadata,
    },
}

impl ReadOutcome {
    /// The custom metadata, whatever the state of the value.
    pub fn custom_metadata(&self) -> Option<&CustomMetadata> {
        match self {
            Self::Absent => None,
            Self::Present(s) => Some(&s.custom_metadata),
            Self::DeletedOrDestroyed {
                custom_metadata, ..
            } => Some(custom_metadata),
        }
    }
    /// `kiln-decommissioned-at`, if a retained decommission marked this path.
    pub fn decommissioned_at(&self) -> Option<&str> {
        self.custom_metadata()
            .and_then(|m| m.get(meta_keys::DECOMMISSIONED_AT))
            .map(String::as_str)
    }
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

/// A readable current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub version: Version,
    pub data: SecretData,
    pub custom_metadata: CustomMetadata,
}

/// Why the current version has no readable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// Soft-deleted at this RFC 3339 time; `undelete` brings it back.
    SoftDeleted { deleted_at: String },
    /// Destroyed: the value is gone for good, the metadata stays.
    Destroyed,
    /// Metadata written without any version (e.g. by hand, or a crash between the two calls).
    NoVersion,
}

/// The result of a create-only (`cas: 0`) write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// This writer won; its data is version 1 (or the next after a metadata-only path).
    Created { version: Version },
    /// Another writer (or an earlier run) got there first: what is there now. The caller uses the
    /// winner's value and discards its own.
    AlreadyExists(ReadOutcome),
}

/// Build `SecretData` from pairs; for callers and tests.
pub fn secret_data<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> SecretData {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), Secret::new(v.into())))
        .collect()
}
