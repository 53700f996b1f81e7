//! Backups as the reconciler runs them (issue 30, docs/backup.md): one snapshot of a cluster from
//! one healthy control plane, with kiln's own Talos identity minted from the cluster's bundle, through
//! `crate::backup`'s pipeline; when one is due (the schedule, shifted per cluster by a jitter both
//! HA instances compute alike); and the `[ha]` refusal of folder destinations, per file.

use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::observe;
use super::policy::Intent;
use crate::backup::{self, BackupError, Destination, Outcome, TakeInput};
use crate::config::BackupConfig;
use crate::secrets::{Prefix, SecretPaths, SecretStore};
use crate::spec::{Cluster, Role};
use crate::talos::grpc::TalosPort;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0} has no spec.backup")]
    NotConfigured(String),
    #[error("secret store: {0}")]
    Store(String),
    #[error("no control plane of {cluster} answered for a snapshot: {tried}")]
    NoControlPlane { cluster: String, tried: String },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("{0}")]
    Destination(#[from] backup::DestError),
}

/// Under `[ha]`, a cluster whose backup destination is a folder is an invalid file: unknown, left
/// alone, `Blocked` with the reason (DESIGN §8; `ha::check_backup_destination`).
pub fn refuse_local_destinations(intent: &mut Intent) {
    let refused: Vec<_> = intent
        .valid
        .iter()
        .filter_map(|(name, v)| {
            let b = v.cluster.spec.backup.as_ref()?;
            crate::ha::check_backup_destination(&b.destination)
                .err()
                .map(|why| (name.clone(), v.path.clone(), why))
        })
        .collect();
    for (name, path, why) in refused {
        intent.valid.remove(&name);
        intent
            .invalid
            .insert(name.to_string(), (path.clone(), format!("{path}: {why}")));
    }
}

/// This cluster's shift inside each schedule interval: from its name alone, so every instance (and
/// every restart) agrees, and clusters with one schedule do not all stream at the same moment.
pub fn jitter(name: &str, schedule: Duration) -> Duration {
    let h = Sha256::digest(name.as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
    let ms = schedule.as_millis().max(1) as u64;
    Duration::from_millis(n % ms)
}

/// The latest slot at or before `now`: the instants `k × schedule + jitter` since the Unix epoch.
pub fn latest_slot(now: OffsetDateTime, schedule: Duration, jitter: Duration) -> OffsetDateTime {
    let period = schedule.as_millis().max(1) as i128;
    let shifted = (now.unix_timestamp_nanos() / 1_000_000) - jitter.as_millis() as i128;
    let k = shifted.div_euclid(period);
    let ms = k * period + jitter.as_millis() as i128;
    OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(now)
}

/// Whether a snapshot is due: no attempt since the latest slot. A cluster never backed up is due at
/// once (its first slot is already past), so a new cluster gets a snapshot soon after Ready.
pub fn due(
    now: OffsetDateTime,
    last_attempt: Option<OffsetDateTime>,
    schedule: Duration,
    name: &str,
) -> bool {
    let slot = latest_slot(now, schedule, jitter(name, schedule));
    last_attempt.is_none_or(|t| t < slot)
}

/// Whether the last good snapshot is too old: older than twice the schedule (one missed slot is
/// a retry's worth of slack; two is a failure someone must see).
pub fn stale(
    now: OffsetDateTime,
    last_success: Option<OffsetDateTime>,
    schedule: Duration,
) -> bool {
    last_success.is_none_or(|t| now - t > schedule * 2)
}

/// Takes one snapshot of `cluster` now: kiln's Talos identity from the cluster's bundle, the first
/// control plane (in node order) that answers over mTLS and streams its database, then the
/// pipeline (encrypt, write, name, verify, prune to `keep`).
pub async fn take_now(
    talos: &dyn TalosPort,
    store: &dyn SecretStore,
    prefix: &Prefix,
    config: &BackupConfig,
    cluster: &Cluster,
    now: OffsetDateTime,
) -> Result<Outcome, RunError> {
    let spec = cluster
        .spec
        .backup
        .as_ref()
        .ok_or_else(|| RunError::NotConfigured(cluster.name.to_string()))?;
    let dest = Destination::open(&spec.destination, config)?;
    let paths = SecretPaths::for_cluster(prefix, &cluster.name);
    let view = observe::secrets(store, &paths)
        .await
        .map_err(|e| RunError::Store(e.to_string()))?;
    let bundle = view.bundle.ok_or_else(|| {
        RunError::Store(format!(
            "the secrets bundle of {} is not readable: no identity to reach its nodes with",
            cluster.name
        ))
    })?;
    let identity =
        observe::talos_identity(&bundle.bundle).map_err(|e| RunError::Store(e.to_string()))?;
    let mut tried = Vec::new();
    for node in cluster
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
    {
        let ip = std::net::IpAddr::V4(node.ip);
        let conn = match talos.connect(ip, &identity).await {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{}: {e}", node.name));
                continue;
            }
        };
        let version = match conn.running_version().await {
            Ok(v) => v,
            Err(e) => {
                tried.push(format!("{}: {e}", node.name));
                continue;
            }
        };
        let stream = match conn.etcd_snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tried.push(format!("{}: {e}", node.name));
                continue;
            }
        };
        let input = TakeInput {
            cluster: cluster.name.to_string(),
            node: node.name.clone(),
            talos_version: version,
            kubernetes_version: cluster.spec.kubernetes.version.to_string(),
            recipients: spec.age_recipients.clone(),
            started_at: now,
        };
        // A failure once the stream started is the snapshot's, not the node's: no second node
        // (the next slot, or a person, tries again).
        return Ok(
            backup::take::run(&dest, &input, stream, backup::database_check(), spec.keep).await?,
        );
    }
    Err(RunError::NoControlPlane {
        cluster: cluster.name.to_string(),
        tried: if tried.is_empty() {
            "the spec lists none".into()
        } else {
            tried.join("; ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn slots_are_shifted_per_cluster_and_each_is_due_once() {
        let six = Duration::from_secs(6 * 3600);
        let (a, b) = (jitter("production", six), jitter("staging", six));
        assert!(a < six && b < six && a != b);
        assert_eq!(a, jitter("production", six), "deterministic");
        let now = datetime!(2026-12-05 05:00 UTC);
        let slot = latest_slot(now, six, a);
        assert!(slot <= now && now - slot < six);
        assert!(due(now, None, six, "production"));
        assert!(!due(now, Some(slot), six, "production"));
        assert!(due(
            now,
            Some(slot - time::Duration::seconds(1)),
            six,
            "production"
        ));
        // The next slot is one schedule later.
        assert!(due(slot + six, Some(slot), six, "production"));
        assert!(!due(
            slot + six - time::Duration::seconds(1),
            Some(slot),
            six,
            "production"
        ));
    }

    #[test]
    fn stale_after_twice_the_schedule() {
        let h = Duration::from_secs(3600);
        let now = datetime!(2026-12-05 05:00 UTC);
        assert!(stale(now, None, h));
        assert!(!stale(now, Some(now - time::Duration::minutes(119)), h));
        assert!(stale(now, Some(now - time::Duration::minutes(121)), h));
    }
}
