//! Status per cluster (DESIGN.md §7): what `kiln status`, `kiln run --once` and the HTTP API show.
//! Persisted as JSON under the state folder so a restart and the CLI see the daemon's last word.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::Power;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Known from Git, not reconciled yet.
    Pending,
    Provisioning,
    Bootstrapping,
    Ready,
    Updating,
    Degraded,
    Deleting,
    /// Waits for a person (protection, conflicts, an unreadable bundle, an invalid file).
    Blocked,
    Failed,
}

impl Phase {
    /// Whether `run --once` may stop waiting for this cluster.
    pub fn is_settled(self) -> bool {
        matches!(self, Phase::Ready | Phase::Blocked | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// e.g. `SpecValid`, `VmsReady`, `Bootstrapped`, `Healthy`, `Committed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// A node's VM as the last Proxmox listing showed it (status.json keeps the lower-case words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Stopped,
    /// Listed, but its power state is not known (a stale status dump, a node not reporting).
    Unknown,
    /// No VM for this node.
    Absent,
}

impl From<Option<Power>> for VmState {
    fn from(p: Option<Power>) -> Self {
        match p {
            Some(Power::Running) => VmState::Running,
            Some(Power::Stopped) => VmState::Stopped,
            Some(Power::Unknown) => VmState::Unknown,
            None => VmState::Absent,
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Unknown => "unknown",
            VmState::Absent => "absent",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub vmid: u32,
    pub ip: Ipv4Addr,
    pub role: String,
    pub vm_state: VmState,
    /// Talos stage as last seen (`maintenance`, `running`, `unreachable`, …).
    pub talos_stage: String,
    /// The Talos version the node runs, as last seen over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talos_version: Option<String>,
    /// The Kubernetes version its kubelet runs, as last seen (its Node, or its running config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub phase: Phase,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// The intent revision whose apply last succeeded.
    pub last_applied_revision: Option<String>,
    pub last_error: Option<String>,
    /// When the next retry comes, while backing off (RFC 3339 in status.json and the API).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retry_at: Option<time::OffsetDateTime>,
    /// When this record last changed (RFC 3339 in status.json and the API).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: time::OffsetDateTime,
    /// The stored kubeconfig and talosconfig, as the last look at the store (or renewal) saw them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<super::renewal::Credential, CredentialStatus>,
    /// Scheduled etcd snapshots (`spec.backup`): the last good one and the last attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// The backup side of a cluster's status (`reconcile::backup`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// RFC 3339 time of the last snapshot that verified, and its id and encrypted size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size_bytes: Option<u64>,
    /// RFC 3339 time of the last attempt (good or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// Why the last attempt failed; `None` once one succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Snapshots at the destination that failed their read-back check at the last attempt.
    #[serde(default)]
    pub failed_checks: u32,
    /// `spec.backup.schedule` in seconds (the alert on a snapshot too old compares with it).
    #[serde(default)]
    pub schedule_seconds: u64,
}

/// One stored credential's dates (its custom metadata) for `kiln status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialStatus {
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// The store's version of the path when seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Time to expiry when the status was printed (`kiln status` fills it in; never stored, it
    /// would be stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
}

impl CredentialStatus {
    /// Seconds until `expires_at` (negative once expired); `None` when it does not parse.
    pub fn seconds_left(&self, now: time::OffsetDateTime) -> Option<i64> {
        time::OffsetDateTime::parse(
            &self.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .map(|t| (t - now).whole_seconds())
    }

    /// `expires in 89days 23h (2027-…)` or `expired 2h ago (…)`.
    pub fn describe(&self, now: time::OffsetDateTime) -> String {
        match self.seconds_left(now) {
            Some(s) if s >= 0 => format!(
                "expires in {} ({})",
                humantime::format_duration(std::time::Duration::from_secs(s as u64)),
                self.expires_at
            ),
            Some(s) => format!(
                "EXPIRED {} ago ({})",
                humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs())),
                self.expires_at
            ),
            None => format!("expires-at `{}` unreadable", self.expires_at),
        }
    }
}

impl ClusterStatus {
    /// The status a cluster continues from: its previous one, or `Pending` for a cluster kiln has
    /// not reported on yet; stamped now.
    pub fn continued(name: &str, previous: Option<&ClusterStatus>) -> Self {
        let mut s = previous.cloned().unwrap_or(ClusterStatus {
            name: name.to_owned(),
            phase: Phase::Pending,
            conditions: Vec::new(),
            nodes: Vec::new(),
            last_applied_revision: None,
            last_error: None,
            retry_at: None,
            updated_at: time::OffsetDateTime::now_utc(),
            credentials: BTreeMap::new(),
            backup: None,
        });
        s.updated_at = time::OffsetDateTime::now_utc();
        s
    }

    /// See [`StatusBook::with_time_left`].
    pub fn fill_time_left(&mut self, now: time::OffsetDateTime) {
        for c in self.credentials.values_mut() {
            c.expires_in_seconds = c.seconds_left(now);
        }
    }

    pub fn set_condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) {
        let c = Condition {
            kind: kind.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(existing) => *existing = c,
            None => self.conditions.push(c),
        }
    }
}

/// All clusters' status, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBook {
    pub clusters: BTreeMap<String, ClusterStatus>,
}

impl StatusBook {
    pub const FILE: &'static str = "status.json";

    pub fn load(state_dir: &Path) -> io::Result<Self> {
        super::state_file::load(state_dir, Self::FILE)
    }

    /// Written to a temporary file and renamed, so a reader never sees half a file.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        super::state_file::save(state_dir, Self::FILE, self)
    }

    /// Fills in each credential's `expires_in_seconds` as of `now`, for printing.
    pub fn with_time_left(mut self, now: time::OffsetDateTime) -> Self {
        for s in self.clusters.values_mut() {
            s.fill_time_left(now);
        }
        self
    }

    /// One line per cluster with stored credentials: their time to expiry (`kiln status`).
    pub fn credentials_table(&self, now: time::OffsetDateTime) -> String {
        let mut out = String::new();
        for s in self.clusters.values().filter(|s| !s.credentials.is_empty()) {
            let parts: Vec<String> = s
                .credentials
                .iter()
                .map(|(which, c)| format!("{which} {}", c.describe(now)))
                .collect();
            out.push_str(&format!("{}: {}\n", s.name, parts.join("; ")));
        }
        out
    }

    /// The table `kiln status` and `run --once` print.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "CLUSTER".to_owned(),
            "PHASE".to_owned(),
            "NODES".to_owned(),
            "REVISION".to_owned(),
            "MESSAGE".to_owned(),
        ]];
        for s in self.clusters.values() {
            let running = s
                .nodes
                .iter()
                .filter(|n| n.vm_state == VmState::Running)
                .count();
            let message = s
                .last_error
                .clone()
                .or_else(|| {
                    s.conditions
                        .iter()
                        .find(|c| !c.status)
                        .map(|c| c.message.clone())
                })
                .unwrap_or_default();
            rows.push([
                s.name.clone(),
                s.phase.to_string(),
                format!("{running}/{}", s.nodes.len()),
                s.last_applied_revision
                    .as_deref()
                    .map(|r| r.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                message,
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if i == 4 {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}", w = widths[i])
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterStatus {
        ClusterStatus {
            name: "production".into(),
            phase: Phase::Ready,
            conditions: vec![],
            nodes: vec![NodeStatus {
                name: "production-cp-1".into(),
                vmid: 401,
                ip: Ipv4Addr::new(192, 168, 2, 161),
                role: "controlplane".into(),
                vm_state: VmState::Running,
                talos_stage: "running".into(),
                talos_version: Some("v1.13.9".into()),
                kubernetes_version: Some("v1.34.1".into()),
            }],
            last_applied_revision: Some("0123456789abcdef".into()),
            last_error: None,
            retry_at: None,
            updated_at: time::macros::datetime!(2026-11-25 0:00 UTC),
            credentials: BTreeMap::new(),
            backup: None,
        }
    }

    #[test]
    fn round_trips_through_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StatusBook::load(dir.path()).unwrap(), StatusBook::default());
        let mut book = StatusBook::default();
        book.clusters.insert("production".into(), sample());
        book.save(dir.path()).unwrap();
        assert_eq!(StatusBook::load(dir.path()).unwrap(), book);
    }

    /// The times are typed now, and status.json and the API still carry them as the RFC 3339 strings
    /// earlier versions wrote: a status file from before reads, and writes back the same text.
    #[test]
    fn times_keep_the_rfc3339_text_status_json_always_had() {
        let old = r#"{"name":"production","phase":"Failed","conditions":[],"nodes":[],
            "last_applied_revision":null,"last_error":"boom","retry_at":"2026-11-25T00:05:30Z",
            "updated_at":"2026-11-25T00:00:00.25Z"}"#;
        let s: ClusterStatus = serde_json::from_str(old).unwrap();
        assert_eq!(
            s.retry_at,
            Some(time::macros::datetime!(2026-11-25 0:05:30 UTC))
        );
        assert_eq!(
            s.updated_at,
            time::macros::datetime!(2026-11-25 0:00:00.25 UTC)
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["retry_at"], "2026-11-25T00:05:30Z");
        assert_eq!(json["updated_at"], "2026-11-25T00:00:00.25Z");
        // No retry: absent or null, as before.
        let none = old.replace(r#""retry_at":"2026-11-25T00:05:30Z","#, "");
        assert_eq!(
            serde_json::from_str::<ClusterStatus>(&none)
                .unwrap()
                .retry_at,
            None
        );
        assert!(serde_json::to_value(sample()).unwrap()["retry_at"].is_null());
        // A time that is not one is refused, not read as "now".
        let bad = old.replace("2026-11-25T00:00:00.25Z", "yesterday");
        assert!(serde_json::from_str::<ClusterStatus>(&bad).is_err());
    }

    #[test]
    fn vm_states_keep_the_words_status_json_always_had() {
        let words: Vec<String> = [
            VmState::Running,
            VmState::Stopped,
            VmState::Unknown,
            VmState::Absent,
        ]
        .iter()
        .map(|v| {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{v}\""));
            assert_eq!(serde_json::from_str::<VmState>(&json).unwrap(), *v);
            v.to_string()
        })
        .collect();
        assert_eq!(words, ["running", "stopped", "unknown", "absent"]);
    }

    #[test]
    fn conditions_are_replaced_by_type() {
        let mut s = sample();
        s.set_condition("Healthy", false, "NodesNotReady", "1 of 5 Ready");
        s.set_condition("Healthy", true, "AllReady", "5 of 5 Ready");
        assert_eq!(s.conditions.len(), 1);
        assert!(s.conditions[0].status);
    }

    #[test]
    fn credentials_show_their_time_to_expiry_as_of_printing() {
        let mut book = StatusBook::default();
        let mut s = sample();
        s.credentials.insert(
            crate::reconcile::renewal::Credential::Kubeconfig,
            CredentialStatus {
                expires_at: "2026-12-01T01:00:00Z".into(),
                issued_at: Some("2025-12-01T01:00:00Z".into()),
                version: Some(2),
                expires_in_seconds: None,
            },
        );
        book.clusters.insert("production".into(), s);
        // Stored without the time left: it would be stale when read.
        let dir = tempfile::tempdir().unwrap();
        book.save(dir.path()).unwrap();
        let saved = std::fs::read_to_string(dir.path().join(StatusBook::FILE)).unwrap();
        assert!(!saved.contains("expires_in_seconds"), "{saved}");
        let now = time::macros::datetime!(2026-12-01 00:00 UTC);
        let shown = book.clone().with_time_left(now);
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(
            json["clusters"]["production"]["credentials"]["kubeconfig"]["expires_in_seconds"],
            3600
        );
        assert_eq!(
            book.credentials_table(now),
            "production: kubeconfig expires in 1h (2026-12-01T01:00:00Z)\n"
        );
        let later = time::macros::datetime!(2026-12-01 03:00 UTC);
        assert!(book.credentials_table(later).contains("EXPIRED 2h ago"));
    }

    #[test]
    fn table_lists_each_cluster() {
        let mut book = StatusBook::default();
        book.clusters.insert("production".into(), sample());
        let t = book.table();
        assert!(t.starts_with("CLUSTER"));
        assert!(t.contains("production  Ready  1/1    0123456789ab"), "{t}");
    }
}
