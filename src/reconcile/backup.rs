//! Backups as the reconciler runs them (issue 30, docs/backup.md): one snapshot of a cluster from
//! one healthy control plane, with kiln's own Talos identity minted from the cluster's bundle, through
//! `crate::backup`'s pipeline; when one is due (the schedule, shifted per cluster by a jitter both
//! HA instances compute alike); and the `[ha]` refusal of folder destinations, per file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::observe;
use super::policy::Intent;
use super::status::{BackupStatus, Phase, StatusBook};
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

/// Snapshots asked for now (`POST /api/v1/clusters/{name}/backups`, which `kiln backup now` sends
/// when a daemon holds the lock): served at the next cycle, whatever the schedule says. Process-wide,
/// like the metrics registry: the API and the engine live in the one daemon process.
fn requested() -> &'static Mutex<std::collections::BTreeSet<String>> {
    static REQUESTED: std::sync::OnceLock<Mutex<std::collections::BTreeSet<String>>> =
        std::sync::OnceLock::new();
    REQUESTED.get_or_init(Default::default)
}

/// Asks the daemon's scheduler for a snapshot of `cluster` at its next cycle.
pub fn request_now(cluster: &str) {
    requested()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(cluster.to_owned());
}

/// One cluster's backup state in this process.
#[derive(Default)]
struct Track {
    /// The destination was looked at once since the start (the newest snapshot there is the last
    /// good one, so a restart does not take a snapshot out of turn).
    looked: bool,
    running: bool,
    last_attempt: Option<OffsetDateTime>,
    last_success: Option<OffsetDateTime>,
    status: BackupStatus,
}

/// The daemon's schedule: per cycle, every Ready cluster with `spec.backup` whose slot has come
/// gets a snapshot in a task of its own (a slow destination never holds a reconcile turn back),
/// one at a time per cluster; each cycle copies the results into the clusters' status.
pub struct Scheduler {
    tracks: Arc<Mutex<BTreeMap<String, Track>>>,
    config: BackupConfig,
    prefix: Prefix,
    talos: Arc<dyn TalosPort>,
    secrets: Arc<dyn SecretStore>,
    /// With `[ha]`: whether this instance still leads (asked before a snapshot starts and before
    /// its prune; the engine runs only while it leads).
    may_write: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Scheduler {
    pub fn new(
        config: BackupConfig,
        prefix: Prefix,
        talos: Arc<dyn TalosPort>,
        secrets: Arc<dyn SecretStore>,
        may_write: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Self {
            tracks: Default::default(),
            config,
            prefix,
            talos,
            secrets,
            may_write,
        }
    }

    /// The daemon's scheduler (always one: which clusters have `spec.backup` is Git's to say, cycle
    /// by cycle); with `[ha]` it asks the engine's leadership before each snapshot.
    pub fn for_engine(
        config: &crate::config::Config,
        ports: &super::Ports,
        prefix: &Prefix,
        leadership: Option<Arc<dyn super::Leadership>>,
    ) -> Option<Self> {
        let may_write: Arc<dyn Fn() -> bool + Send + Sync> = match leadership {
            Some(l) => Arc::new(move || l.check()),
            None => Arc::new(|| true),
        };
        Some(Self::new(
            config.backup.clone(),
            prefix.clone(),
            ports.talos.clone(),
            ports.secrets.clone(),
            may_write,
        ))
    }

    /// Starts the snapshots that are due among `clusters` (the tip's valid clusters whose status
    /// is Ready or Degraded), forgets clusters no longer listed, and leaves each one's backup
    /// status and condition in `book`.
    pub fn tick(&self, clusters: Vec<Cluster>, book: &mut StatusBook, now: OffsetDateTime) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let with_backup: BTreeMap<String, Cluster> = clusters
            .into_iter()
            .filter(|c| c.spec.backup.is_some())
            .map(|c| (c.name.to_string(), c))
            .collect();
        tracks.retain(|name, _| with_backup.contains_key(name) || book.clusters.contains_key(name));
        for (name, cluster) in &with_backup {
            let ready = book
                .clusters
                .get(name)
                .is_some_and(|s| matches!(s.phase, Phase::Ready | Phase::Degraded));
            let Some(spec) = &cluster.spec.backup else {
                continue;
            };
            let track = tracks.entry(name.clone()).or_default();
            let forced = ready
                && !track.running
                && requested()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
            let is_due = !track.looked || due(now, track.last_attempt, spec.schedule.0, name);
            if ready && !track.running && (is_due || forced) && (self.may_write)() {
                track.running = true;
                tokio::spawn(attempt(
                    forced,
                    cluster.clone(),
                    Shared {
                        tracks: self.tracks.clone(),
                        config: self.config.clone(),
                        prefix: self.prefix.clone(),
                        talos: self.talos.clone(),
                        secrets: self.secrets.clone(),
                        may_write: self.may_write.clone(),
                    },
                ));
            }
        }
        for (name, status) in book.clusters.iter_mut() {
            let (Some(cluster), Some(track)) = (with_backup.get(name), tracks.get(name)) else {
                if status.backup.take().is_some() {
                    status.conditions.retain(|c| c.kind != BACKUP_CONDITION);
                }
                continue;
            };
            let schedule = cluster.spec.backup.as_ref().map(|b| b.schedule.0);
            let mut b = track.status.clone();
            b.schedule_seconds = schedule.map_or(0, |s| s.as_secs());
            status.backup = Some(b);
            let too_old =
                schedule.is_some_and(|s| track.looked && stale(now, track.last_success, s));
            if let Some(e) = &track.status.last_error {
                status.set_condition(
                    BACKUP_CONDITION,
                    true,
                    "BackupFailed",
                    &format!("the last etcd snapshot failed: {e}"),
                );
            } else if track.status.failed_checks > 0 {
                status.set_condition(BACKUP_CONDITION, true, "SnapshotCheckFailed", &format!("{} snapshot(s) at the destination failed their read-back check (kiln backup list {name})", track.status.failed_checks));
            } else if too_old && track.last_attempt.is_some() {
                status.set_condition(
                    BACKUP_CONDITION,
                    true,
                    "BackupTooOld",
                    "the last good etcd snapshot is older than twice spec.backup.schedule",
                );
            } else {
                status.conditions.retain(|c| c.kind != BACKUP_CONDITION);
            }
        }
    }
}

/// The condition a failing backup puts on a cluster: `Degraded`, true, with the reason. The phase
/// is left alone: the cluster itself serves; the backup has its own metric and alert.
pub const BACKUP_CONDITION: &str = "BackupDegraded";

/// What a snapshot task takes along from the scheduler.
struct Shared {
    tracks: Arc<Mutex<BTreeMap<String, Track>>>,
    config: BackupConfig,
    prefix: Prefix,
    talos: Arc<dyn TalosPort>,
    secrets: Arc<dyn SecretStore>,
    may_write: Arc<dyn Fn() -> bool + Send + Sync>,
}

async fn attempt(forced: bool, cluster: Cluster, shared: Shared) {
    let Shared {
        tracks,
        config,
        prefix,
        talos,
        secrets,
        may_write,
    } = shared;
    let name = cluster.name.to_string();
    let Some(spec) = cluster.spec.backup.clone() else {
        return;
    };
    let update = |f: &mut dyn FnMut(&mut Track)| {
        let mut t = tracks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(track) = t.get_mut(&name) {
            f(track);
        }
    };
    let looked = tracks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .is_some_and(|t| t.looked);
    if !looked {
        // The newest snapshot at the destination stands for the last attempt and success.
        let newest = match Destination::open(&spec.destination, &config) {
            Ok(dest) => backup::take::catalogue(&dest, &name, false)
                .await
                .ok()
                .and_then(|entries| {
                    entries.into_iter().rev().find_map(|e| {
                        let m = e.manifest?;
                        let at = OffsetDateTime::parse(&m.created_at, &Rfc3339).ok()?;
                        Some((at, m.id, m.encrypted.size))
                    })
                }),
            Err(_) => None,
        };
        let now = OffsetDateTime::now_utc();
        let mut go = true;
        update(&mut |t| {
            t.looked = true;
            if let Some((at, id, size)) = &newest {
                t.last_attempt = Some(*at);
                t.last_success = Some(*at);
                t.status.last_success_at = Some(backup::manifest::rfc3339(*at));
                t.status.last_snapshot = Some(id.clone());
                t.status.last_size_bytes = Some(*size);
                go = forced || due(now, Some(*at), spec.schedule.0, &name);
            }
            if !go {
                t.running = false;
            }
        });
        if !go {
            return;
        }
    }
    if !may_write() {
        update(&mut |t| t.running = false);
        return;
    }
    let now = OffsetDateTime::now_utc();
    update(&mut |t| {
        t.last_attempt = Some(now);
        t.status.last_attempt_at = Some(backup::manifest::rfc3339(now));
        // The error is this attempt's once it ends; a waiter must not take the last one's for it.
        t.status.last_error = None;
    });
    let result = take_now(
        talos.as_ref(),
        secrets.as_ref(),
        &prefix,
        &config,
        &cluster,
        now,
    )
    .await;
    match result {
        Ok(out) => {
            tracing::info!(cluster = %name, snapshot = %out.snapshot.id, pruned = out.pruned.len(), "etcd snapshot verified");
            let failed = out
                .snapshots
                .iter()
                .filter(|e| !e.state.is_verified())
                .count();
            update(&mut |t| {
                t.running = false;
                t.last_success = Some(now);
                t.status.last_success_at = Some(backup::manifest::rfc3339(now));
                t.status.last_snapshot = Some(out.snapshot.id.clone());
                t.status.last_size_bytes = Some(out.snapshot.encrypted.size);
                t.status.last_error = None;
                t.status.failed_checks = u32::try_from(failed).unwrap_or(u32::MAX);
            });
        }
        Err(e) => {
            tracing::warn!(cluster = %name, error = %e, "etcd snapshot failed");
            crate::metrics::global().backup_failed(&name);
            let message = e.to_string();
            update(&mut |t| {
                t.running = false;
                t.status.last_error = Some(message.clone());
            });
        }
    }
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

    fn intent_with(destination: &str) -> Intent {
        let text = include_str!("../../examples/clusters/production.yaml").replace(
            "  # backup:",
            &format!(
                "  backup:\n    schedule: 6h\n    keep: 2\n    destination: {destination}\n    \
                 ageRecipients: [age1ddjjy4pgp9ns70r49y9n39curr87w5t8unnzxadlccflyvepesxssjkppd]\n  \
                 # was:"
            ),
        );
        let out = crate::spec::load([(
            std::path::Path::new("clusters/production.yaml"),
            text.as_str(),
        )]);
        assert!(out.invalid.is_empty(), "{:?}", out.invalid);
        let cluster = out.clusters.into_iter().next().unwrap();
        assert!(cluster.spec.backup.is_some());
        let mut intent = Intent::default();
        intent.valid.insert(
            cluster.name.clone(),
            super::super::policy::ValidIntent {
                cluster,
                path: "clusters/production.yaml".into(),
                text,
                revision: "r".into(),
            },
        );
        intent
    }

    /// Seen failing with the refusal's loop emptied.
    #[test]
    fn under_ha_a_folder_destination_makes_the_file_invalid_and_s3_passes() {
        let mut folder = intent_with("/var/backups/kiln");
        refuse_local_destinations(&mut folder);
        assert!(folder.valid.is_empty());
        let (path, why) = &folder.invalid["production"];
        assert_eq!(path, "clusters/production.yaml");
        assert!(
            why.contains("[ha] refuses") && why.contains("s3://"),
            "{why}"
        );
        let mut s3 = intent_with("s3://kiln-backups/production");
        refuse_local_destinations(&mut s3);
        assert_eq!(s3.valid.len(), 1);
        assert!(s3.invalid.is_empty());
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
