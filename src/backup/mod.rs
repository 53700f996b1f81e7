//! etcd backups (issue 30, DESIGN §2 `spec.backup`): snapshots streamed from a control plane,
//! encrypted to the cluster's age recipients, written to a folder or an S3 prefix under a
//! temporary name, named `<cluster>/<UTC timestamp>-<revision>.db.age` with a manifest once
//! complete, read back and checked, and pruned to `keep` verified ones. docs/backup.md.
//!
//! - [`bbolt`]: etcd's database format, checked as it streams (the revision read at the end).
//! - [`dest`]: the destinations (folder, S3) behind one API: `put_stream`, `get_stream`, `list`,
//!   `rename`, `delete`.
//! - [`crypt`]: age encryption and decryption as streams (`encrypt_stream`, `decrypt_stream`).
//! - [`manifest`]: the manifest beside each snapshot, the ids and keys.
//! - [`take`]: the pipeline, verification, the catalogue (`kiln backup list`) and the prune.
//! - [`restore`]: Talos's etcd recovery as a printed plan and its executor (docs/backup-etcd.md).

pub mod bbolt;
pub mod crypt;
pub mod dest;
pub mod manifest;
pub mod restore;
pub mod take;

pub use dest::{DestError, Destination};
pub use manifest::Manifest;
pub use take::{Entry, Outcome, PlaintextCheck, State, TakeInput};

/// Names that start with this are objects being written (or left by a run that stopped): never
/// snapshots, removed by the next good run.
pub const TEMP_PREFIX: &str = ".partial-";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error(transparent)]
    Crypt(#[from] crypt::CryptError),
    #[error("the snapshot stream failed: {0}")]
    Snapshot(String),
    #[error("the snapshot is not a good etcd database: {0}")]
    Check(String),
    #[error("snapshot {id} did not verify after writing: {reason}")]
    Verify { id: String, reason: String },
}

/// The check every snapshot streams through: etcd's database format (`bbolt::SnapshotCheck`), the
/// revision read from the database once complete.
pub fn database_check() -> Box<dyn PlaintextCheck> {
    Box::new(bbolt::SnapshotCheck::new())
}

impl PlaintextCheck for bbolt::SnapshotCheck {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        bbolt::SnapshotCheck::feed(self, chunk).map_err(|e| e.to_string())
    }
    fn finish(self: Box<Self>) -> Result<u64, String> {
        let facts = bbolt::SnapshotCheck::finish(*self).map_err(|e| e.to_string())?;
        u64::try_from(facts.revision)
            .map_err(|_| format!("the database's revision {} is negative", facts.revision))
    }
}
