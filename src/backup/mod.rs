//! etcd backups: the snapshot format and pipeline (docs/backup.md, docs/backup-etcd.md).

pub mod bbolt;
pub mod restore;
