//! The cycle's safety decisions (DESIGN.md §7), as pure functions of what Git says, what kiln
//! remembers and the clock: no port, no file, no task. `engine` gathers the inputs, asks here, and
//! does the I/O the answer calls for.
//!
//! The rules, each tested below:
//! - a file that exists but does not load is *unknown*, never *deleted*: its cluster is left alone
//!   and its last applied spec is still rendered;
//! - when Git cannot be read, nothing is missing (so nothing is decommissioned);
//! - when the clusters folder yields no valid file while kiln manages clusters, every missing
//!   cluster is held unless `allow_empty`;
//! - `deletionProtection: true` holds a missing cluster for as long as the file is gone;
//! - a missing file waits `decommission_grace` from when it was first seen missing;
//! - a cluster past its grace leaves the rendered output (its removal commit), and is destroyed only
//!   once that output is published and the tip published still lacks its file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::records::{ClusterRecord, Records};
use super::status::Phase;
use crate::git::Snapshot;
use crate::render::RenderSettings;
use crate::spec::{self, Cluster, ClusterName};

/// One cluster file that loads and validates.
#[derive(Debug, Clone)]
pub struct ValidIntent {
    pub cluster: Cluster,
    pub path: String,
    pub text: String,
    pub revision: String,
}

/// What the clusters folder says at one revision.
#[derive(Debug, Clone, Default)]
pub struct Intent {
    pub valid: BTreeMap<ClusterName, ValidIntent>,
    /// stem → (path, every error): unknown clusters, never deleted. Keyed by the file's stem, which
    /// need not be a valid cluster name (that can be the very error).
    pub invalid: BTreeMap<String, (String, String)>,
}

impl Intent {
    pub fn read(snapshot: &Snapshot) -> Self {
        let outcome = spec::load(snapshot.texts().map(|(p, t)| (Path::new(p), t)));
        let mut intent = Intent::default();
        for w in &outcome.warnings {
            tracing::debug!("{w}");
        }
        // The first file of each name, as `Snapshot::intent_revision` finds it; one map rather
        // than a scan of the files per cluster (quadratic in the fleet).
        let mut by_name = std::collections::HashMap::new();
        for f in &snapshot.files {
            by_name.entry(f.name.as_str()).or_insert(f);
        }
        for c in outcome.clusters {
            let Some(file) = by_name.get(c.name.as_str()) else {
                continue;
            };
            let Ok(text) = &file.text else { continue };
            let revision = crate::git::IntentRevision {
                blob: file.blob,
                templates: snapshot.templates_tree,
            }
            .to_string();
            intent.valid.insert(
                c.name.clone(),
                ValidIntent {
                    path: file.path.clone(),
                    text: text.clone(),
                    revision,
                    cluster: c,
                },
            );
        }
        for bad in outcome.invalid {
            let message = bad
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            intent
                .invalid
                .insert(bad.stem, (bad.path.display().to_string(), message));
        }
        for f in &snapshot.files {
            if let Err(why) = &f.text {
                let (_, message) = intent
                    .invalid
                    .entry(f.name.clone())
                    .or_insert_with(|| (f.path.clone(), String::new()));
                if !message.is_empty() {
                    message.push('\n');
                }
                message.push_str(&format!("{}: {why}", f.path));
            }
        }
        // A valid `x.yaml` beside an invalid `x.yml` or a link: which one the person meant is
        // unknown, so the cluster is unknown too (left alone, reported) rather than half-read.
        intent
            .valid
            .retain(|name, _| !intent.invalid.contains_key(name.as_str()));
        intent
    }

    /// Whether Git names this cluster at all, validly or not.
    pub fn present(&self, name: &str) -> bool {
        self.valid.contains_key(name) || self.invalid.contains_key(name)
    }
}

/// A recorded spec text, loaded on its own (for rendering a cluster whose file is invalid or gone).
pub fn recorded_cluster(record: &ClusterRecord) -> Option<Cluster> {
    let path = if record.path.is_empty() {
        "recorded.yaml".to_owned()
    } else {
        record.path.clone()
    };
    spec::load([(Path::new(&path), record.spec_text.as_str())])
        .clusters
        .into_iter()
        .next()
}

/// The spec last applied, for a cluster whose file is valid now: the file's own cluster when the
/// text is the one recorded (the usual case once converged), so a cycle does not parse and
/// validate every record's text again; otherwise the recorded text, loaded on its own. `None`
/// before a first success.
pub fn previous_cluster(record: &ClusterRecord, now: &ValidIntent) -> Option<Cluster> {
    record.applied_revision.as_ref()?;
    if record.spec_text == now.text {
        return Some(now.cluster.clone());
    }
    recorded_cluster(record)
}

/// The configuration the rules read (`[reconcile]`).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub allow_empty: bool,
    pub decommission_grace: Duration,
}

/// What happens to a managed cluster whose file is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Git gave nothing valid while kiln manages clusters (and `allow_empty` is off): held.
    HeldEmpty,
    Protected,
    Grace {
        until: OffsetDateTime,
    },
    /// Grace over: its files go in the next commit, then its VMs are destroyed.
    Decommission,
}

impl Missing {
    /// Held clusters keep their generated files; only a decommission removes them.
    pub fn keeps_output(self) -> bool {
        !matches!(self, Missing::Decommission)
    }
}

/// Updates the records from what Git names: a new valid cluster is recorded (kiln may make VMs for
/// it from now on), a file that is back, valid or not, cancels its decommission. Returns whether a
/// cluster was added (the records must then reach the disk before any action).
pub fn record_intent(records: &mut Records, intent: &Intent) -> bool {
    let known_before = records.clusters.len();
    for (name, v) in &intent.valid {
        let r = records.clusters.entry(name.clone()).or_default();
        if r.applied_revision.is_none() {
            r.spec_text = v.text.clone();
            r.path = v.path.clone();
        }
        r.protected = v.cluster.spec.deletion_protection;
        r.missing_since = None;
    }
    for name in intent.invalid.keys() {
        if let Some(r) = records.clusters.get_mut(name.as_str()) {
            r.missing_since = None;
        }
    }
    records.clusters.len() != known_before
}

/// The known clusters Git no longer names and what happens to each. `git_read` is false when this
/// cycle works from an older revision because the fetch failed: then nothing is missing. Stamps
/// `missing_since` on a cluster first seen missing now.
pub fn missing_clusters(
    records: &mut Records,
    intent: &Intent,
    git_read: bool,
    rules: Rules,
    now: OffsetDateTime,
) -> BTreeMap<ClusterName, Missing> {
    let mut missing = BTreeMap::new();
    if !git_read {
        return missing;
    }
    for (name, record) in records.clusters.iter_mut() {
        if intent.present(name) {
            continue;
        }
        let since = *record.missing_since.get_or_insert(now);
        let state = missing_state(
            record.protected,
            since,
            !intent.valid.is_empty(),
            rules,
            now,
        );
        missing.insert(name.clone(), state);
    }
    missing
}

/// An emptied clusters folder (no valid file while kiln manages clusters) is taken for a mistake
/// and destroys nothing, unless `allow_empty`. Shared by the daemon and `kiln plan --offline`.
pub fn empty_folder_holds(any_valid: bool, allow_empty: bool) -> bool {
    !any_valid && !allow_empty
}

/// The rule for one missing cluster. The empty-folder hold comes first: an emptied folder is taken
/// for a mistake whatever each file said.
pub fn missing_state(
    protected: bool,
    missing_since: OffsetDateTime,
    any_valid: bool,
    rules: Rules,
    now: OffsetDateTime,
) -> Missing {
    if empty_folder_holds(any_valid, rules.allow_empty) {
        return Missing::HeldEmpty;
    }
    if protected {
        return Missing::Protected;
    }
    let until = missing_since + rules.decommission_grace;
    if now < until {
        Missing::Grace { until }
    } else {
        Missing::Decommission
    }
}

/// The missing clusters whose generated files stay.
pub fn held(missing: &BTreeMap<ClusterName, Missing>) -> BTreeSet<ClusterName> {
    missing
        .iter()
        .filter(|(_, m)| m.keeps_output())
        .map(|(n, _)| n.clone())
        .collect()
}

/// The clusters whose files belong in `output_dir`: valid files, plus the last applied spec of
/// clusters that are unknown (invalid file) or still held (grace, protection, an empty folder). A
/// cluster past its grace is left out: that is its removal commit. Sorted by name.
pub fn output_clusters(
    intent: &Intent,
    records: &Records,
    held: &BTreeSet<ClusterName>,
) -> Vec<(Cluster, String)> {
    let mut out: Vec<(Cluster, String)> = intent
        .valid
        .values()
        .map(|v| (v.cluster.clone(), v.text.clone()))
        .collect();
    for (name, r) in &records.clusters {
        if intent.valid.contains_key(name) {
            continue;
        }
        let keep = intent.invalid.contains_key(name.as_str()) || held.contains(name);
        if keep
            && r.applied_revision.is_some()
            && let Some(c) = recorded_cluster(r)
        {
            out.push((c, r.spec_text.clone()));
        }
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    out
}

/// The publish key: equal keys mean equal generated files (rendering is a pure function of these
/// inputs, §7), so an equal key skips the fetch and the commit.
pub fn publish_key(
    settings: &RenderSettings,
    clusters: &[(Cluster, String)],
    templates: &BTreeMap<String, String>,
) -> String {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(format!("{settings:?}").as_bytes());
    for (path, text) in templates {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    for (c, text) in clusters {
        h.update(c.name.as_str().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The clusters a publish commit speaks for (its message): intent not yet applied, and removals.
pub fn changed_clusters(
    intent: &Intent,
    records: &Records,
    missing: &BTreeMap<ClusterName, Missing>,
) -> Vec<String> {
    intent
        .valid
        .iter()
        .filter(|(n, v)| {
            records
                .clusters
                .get(*n)
                .and_then(|r| r.applied_revision.as_deref())
                != Some(v.revision.as_str())
        })
        .map(|(n, _)| n.to_string())
        .chain(
            missing
                .iter()
                .filter(|(_, m)| !m.keeps_output())
                .map(|(n, _)| n.to_string()),
        )
        .collect()
}

/// What this cycle does with a missing cluster once the publish is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingTurn {
    /// Its removal is published and the tip lacks its file: stop and destroy.
    Decommission,
    /// A rejected push made the publish render a newer tip where the file is back: that tip, not
    /// this cycle's snapshot, is what the remote says; the decommission is cancelled.
    Returned,
    /// Nothing destructive this cycle.
    Hold,
}

/// Publish before destroy: a decommission goes on only when the output without the cluster is at
/// the tip (`published`), and only if the tip published still lacks its file.
pub fn missing_turn(state: Missing, published: bool, present_at_tip: bool) -> MissingTurn {
    match state {
        Missing::Decommission if published && present_at_tip => MissingTurn::Returned,
        Missing::Decommission if published => MissingTurn::Decommission,
        _ => MissingTurn::Hold,
    }
}

/// How a held cluster is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVerdict {
    pub phase: Phase,
    pub message: String,
    /// `run --once` may stop waiting for it.
    pub settled: bool,
    pub wake_in: Option<Duration>,
}

pub fn held_verdict(
    state: Missing,
    path: &str,
    published: bool,
    now: OffsetDateTime,
) -> HeldVerdict {
    match state {
        Missing::HeldEmpty => HeldVerdict {
            phase: Phase::Blocked,
            message: "the clusters folder has no valid file while kiln manages clusters: taken for a mistake, nothing is destroyed (set reconcile.allow_empty = true to decommission the last cluster)".to_owned(),
            settled: true,
            wake_in: None,
        },
        Missing::Protected => HeldVerdict {
            phase: Phase::Blocked,
            message: format!(
                "{path} was deleted but the cluster has deletionProtection: true; restore the file, or set deletionProtection: false before deleting it"
            ),
            settled: true,
            wake_in: None,
        },
        Missing::Grace { until } => HeldVerdict {
            phase: Phase::Deleting,
            message: format!(
                "file deleted; decommission starts at {} unless the file comes back",
                until.format(&Rfc3339).unwrap_or_default()
            ),
            settled: false,
            wake_in: Some(
                Duration::try_from(until - now)
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_secs(1)),
            ),
        },
        Missing::Decommission => HeldVerdict {
            phase: Phase::Deleting,
            message: "waiting until the removal of its files is pushed".to_owned(),
            // A publish that failed is retried by a later cycle; one that is still to come is not.
            settled: !published,
            wake_in: Some(Duration::from_secs(5)),
        },
    }
}

#[cfg(test)]
mod tests;
