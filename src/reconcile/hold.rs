//! A hold on one cluster while something outside the reconciler changes it (`kiln restore`, DESIGN
//! §7: "while it runs, the daemon holds the cluster — no drift repair, no step, no `Failed`").
//!
//! A hold is a file, `state_dir/requests/hold-<cluster>.json`, in the folder the daemon watches (so
//! it wakes at once), as `kiln rotate`'s requests are (`reconcile::requests`). The lock holder
//! acknowledges it at the start of a cycle — when no turn of any cluster runs, since a cycle joins
//! every turn it starts — by writing `hold-<cluster>.ack.json` with the hold's time; from then on
//! it leaves that cluster alone (no turn, no decommission, no snapshot) until the hold file is gone.
//! The holder waits for that acknowledgement before touching the cluster, and removes both files
//! when it is done, whatever the outcome.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::requests::{RequestError, dir, read_json, write_json};
use super::state_file::rfc3339;
use crate::spec::ClusterName;

const PREFIX: &str = "hold-";
const HOLD_SUFFIX: &str = ".json";
const ACK_SUFFIX: &str = ".ack.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub cluster: String,
    /// What holds it, for the status and a person reading the folder (`kiln restore, pid 42`).
    pub by: String,
    /// RFC 3339, to the nanosecond: an acknowledgement names the hold it answers.
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ack {
    cluster: String,
    since: String,
    acknowledged_at: String,
}

fn hold_path(state_dir: &Path, cluster: &str) -> PathBuf {
    dir(state_dir).join(format!("{PREFIX}{cluster}{HOLD_SUFFIX}"))
}

fn ack_path(state_dir: &Path, cluster: &str) -> PathBuf {
    dir(state_dir).join(format!("{PREFIX}{cluster}{ACK_SUFFIX}"))
}

/// Places a hold on `cluster` for `by`.
pub fn place(state_dir: &Path, cluster: &ClusterName, by: &str) -> Result<Hold, RequestError> {
    let hold = Hold {
        cluster: cluster.to_string(),
        by: by.to_owned(),
        since: rfc3339(OffsetDateTime::now_utc()),
    };
    write_json(&hold_path(state_dir, cluster), &hold)?;
    Ok(hold)
}

/// Lifts the hold (and its acknowledgement); a hold already gone is fine.
pub fn release(state_dir: &Path, cluster: &ClusterName) {
    let _ = std::fs::remove_file(hold_path(state_dir, cluster));
    let _ = std::fs::remove_file(ack_path(state_dir, cluster));
}

/// Whether the lock holder has acknowledged `hold` (not an earlier one of the same cluster).
pub fn acknowledged(state_dir: &Path, hold: &Hold) -> bool {
    read_json::<Ack>(&ack_path(state_dir, &hold.cluster))
        .ok()
        .flatten()
        .is_some_and(|a| a.since == hold.since)
}

/// The holds in place, by cluster. An unreadable hold file still holds its cluster (named by the
/// file): a hold read as absent could let a turn run into a restore.
pub fn held(state_dir: &Path) -> BTreeMap<String, Hold> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(cluster) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(HOLD_SUFFIX))
            .filter(|n| !n.ends_with(".ack") && !n.contains(".tmp"))
        else {
            continue;
        };
        let hold = match read_json::<Hold>(&entry.path()) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable hold file holds its cluster");
                Hold {
                    cluster: cluster.to_owned(),
                    by: format!("an unreadable hold file ({e})"),
                    since: String::new(),
                }
            }
        };
        out.insert(cluster.to_owned(), hold);
    }
    out
}

/// The lock holder, at the start of a cycle: every hold in place is acknowledged.
pub fn acknowledge(state_dir: &Path, hold: &Hold) -> Result<(), RequestError> {
    if acknowledged(state_dir, hold) {
        return Ok(());
    }
    let ack = Ack {
        cluster: hold.cluster.clone(),
        since: hold.since.clone(),
        acknowledged_at: rfc3339(OffsetDateTime::now_utc()),
    };
    write_json(&ack_path(state_dir, &hold.cluster), &ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_seen_acknowledged_for_itself_only_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let c: ClusterName = "prod".parse().unwrap();
        assert!(held(dir.path()).is_empty());
        let first = place(dir.path(), &c, "kiln restore, pid 1").unwrap();
        assert_eq!(held(dir.path())["prod"], first);
        assert!(!acknowledged(dir.path(), &first));
        acknowledge(dir.path(), &first).unwrap();
        assert!(acknowledged(dir.path(), &first));
        // The acknowledgement is not mistaken for a hold of a cluster named `prod.ack`.
        assert_eq!(held(dir.path()).len(), 1);
        // A later hold is not acknowledged by the earlier one's answer.
        let second = place(dir.path(), &c, "kiln restore, pid 2").unwrap();
        assert!(!acknowledged(dir.path(), &second));
        release(dir.path(), &c);
        assert!(held(dir.path()).is_empty());
        assert!(!acknowledged(dir.path(), &second));
    }

    #[test]
    fn an_unreadable_hold_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(super::dir(dir.path())).unwrap();
        std::fs::write(hold_path(dir.path(), "prod"), "{not json").unwrap();
        assert!(held(dir.path()).contains_key("prod"));
    }
}
