//! kiln's Prometheus metrics (DESIGN §8, `GET /metrics`): one process-wide set, so every adapter
//! can count its requests without a handle threaded through each constructor. docs/metrics.md
//! lists every series.
//!
//! Invariant: label values are bounded and never secret — cluster names, phases, action kinds,
//! system names, operation names, results, a revision id; never a URL with credentials, a token,
//! or an error text. Per-cluster series leave with the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use time::OffsetDateTime;

use crate::plan::Action;
use crate::reconcile::status::{ClusterStatus, Phase, StatusBook};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub system: &'static str,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterPhaseLabels {
    pub cluster: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub cluster: String,
    pub credential: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub cluster: String,
    pub revision: String,
}

/// The external systems kiln talks to, as the `system` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Proxmox,
    Vault,
    Git,
    Talos,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Proxmox => "proxmox",
            System::Vault => "vault",
            System::Git => "git",
            System::Talos => "talos",
        }
    }
}

/// How a webhook delivery was answered (`kiln_webhook_deliveries_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A push with a good signature: a poll was asked for.
    Accepted,
    /// A ping or another event that needs no poll.
    Ignored,
    BadSignature,
    TooLarge,
    RateLimited,
    /// No `api.webhook_secret_file`.
    NotConfigured,
    /// Not a body kiln could read.
    BadRequest,
}

impl Delivery {
    pub const ALL: [Delivery; 7] = [
        Delivery::Accepted,
        Delivery::Ignored,
        Delivery::BadSignature,
        Delivery::TooLarge,
        Delivery::RateLimited,
        Delivery::NotConfigured,
        Delivery::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Accepted => "accepted",
            Delivery::Ignored => "ignored",
            Delivery::BadSignature => "bad_signature",
            Delivery::TooLarge => "too_large",
            Delivery::RateLimited => "rate_limited",
            Delivery::NotConfigured => "not_configured",
            Delivery::BadRequest => "bad_request",
        }
    }
}

/// How one step ended, as `kiln_actions_total{result}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    Ok,
    /// Not failed: a machine is not there yet, looked at again soon.
    Wait,
    Error,
    /// Refused: waits for a person.
    Blocked,
}

impl ActionResult {
    fn as_str(self) -> &'static str {
        match self {
            ActionResult::Ok => "ok",
            ActionResult::Wait => "wait",
            ActionResult::Error => "error",
            ActionResult::Blocked => "blocked",
        }
    }
}

/// The kind of an action, without its target: a bounded label (the node or VMID is not).
pub fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::GenerateSecrets => "generate-secrets",
        Action::CreateVm { .. } => "create-vm",
        Action::FinishVm { .. } => "finish-vm",
        Action::StartVm { .. } => "start-vm",
        Action::ResizeVm { .. } => "resize-vm",
        Action::ApplyConfig { .. } => "apply-config",
        Action::UpdateConfig { .. } => "update-config",
        Action::Bootstrap { .. } => "bootstrap",
        Action::JoinControlPlane { .. } => "join-control-plane",
        Action::StoreCredentials => "store-credentials",
        Action::WaitHealthy => "wait-healthy",
        Action::Uncordon { .. } => "uncordon",
        Action::RenewCredentials { .. } => "renew-credentials",
        Action::RemoveNode { .. } => "remove-node",
        Action::DestroyVm { .. } => "destroy-vm",
        Action::RetireSecrets { .. } => "retire-secrets",
        Action::UpgradeTalos { .. } => "upgrade-talos",
        Action::UpgradeKubernetes { .. } => "upgrade-kubernetes",
        Action::SyncManifests { .. } => "sync-manifests",
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The per-cluster series exported for each cluster after the last cycle, so the ones of a
/// cluster that left (or a credential, or a revision that moved on) are removed, not left frozen.
#[derive(Default)]
struct Exported {
    phase: BTreeSet<String>,
    revision: BTreeMap<String, String>,
    failing: BTreeSet<String>,
    /// Expiry (Unix seconds) per (cluster, credential): the time left is computed at each scrape.
    expiry: BTreeMap<(String, &'static str), f64>,
    /// Clusters with a backup series.
    backup: BTreeSet<String>,
}

pub struct Metrics {
    registry: Registry,
    pub cycles: Family<ResultLabel, Counter>,
    pub cycle_duration: Histogram,
    pub clusters: Family<PhaseLabel, Gauge>,
    last_cycle: FloatGauge,
    cycle_started: FloatGauge,
    cycle_running: Gauge,
    poll_interval: FloatGauge,
    actions: Family<ActionLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_errors: Family<RequestLabels, Counter>,
    git_reachable: Gauge,
    /// `[ha]` only: 1 while this instance holds the Lease.
    ha_leader: Gauge,
    webhooks: Family<ResultLabel, Counter>,
    cluster_phase: Family<ClusterPhaseLabels, Gauge>,
    cluster_failing: Family<ClusterLabel, Gauge>,
    applied_revision: Family<RevisionLabels, Gauge>,
    credential_expiry: Family<CredentialLabels, FloatGauge>,
    credential_left: Family<CredentialLabels, FloatGauge>,
    backup_last_success: Family<ClusterLabel, FloatGauge>,
    backup_size: Family<ClusterLabel, Gauge>,
    backup_failures: Family<ClusterLabel, Counter>,
    backup_failed_checks: Family<ClusterLabel, Gauge>,
    backup_schedule: Family<ClusterLabel, Gauge>,
    exported: Mutex<Exported>,
}

/// Every phase a cluster can be in, so each gauge exists (at 0) before the first cluster has it:
/// an alert on `kiln_clusters{phase="Failed"}` then has a series to read.
const PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::Provisioning,
    Phase::Bootstrapping,
    Phase::Ready,
    Phase::Updating,
    Phase::Degraded,
    Phase::Deleting,
    Phase::Blocked,
    Phase::Failed,
];

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let cycles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconcile_cycles",
            "Reconcile cycles finished, by result (ok: the cycle ran to its end; error: it stopped \
             short on Git or Proxmox, or could not read the remote)",
            cycles.clone(),
        );
        for r in ["ok", "error"] {
            drop(cycles.get_or_create(&ResultLabel { result: r.into() }));
        }
        // From 10 ms (a no-op cycle) to 30 min (a cycle that carries a rolling upgrade).
        let cycle_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]);
        registry.register_with_unit(
            "reconcile_cycle_duration",
            "Wall time of one reconcile cycle",
            Unit::Seconds,
            cycle_duration.clone(),
        );
        let last_cycle = FloatGauge::default();
        registry.register(
            "reconcile_last_cycle_timestamp_seconds",
            "When the last reconcile cycle finished (Unix time; 0 before the first)",
            last_cycle.clone(),
        );
        let cycle_started = FloatGauge::default();
        registry.register(
            "reconcile_cycle_started_timestamp_seconds",
            "When the cycle running now, or the last one, started (Unix time)",
            cycle_started.clone(),
        );
        let cycle_running = Gauge::default();
        registry.register(
            "reconcile_cycle_running",
            "1 while a reconcile cycle runs (a rolling upgrade keeps one running for long)",
            cycle_running.clone(),
        );
        let poll_interval = FloatGauge::default();
        registry.register(
            "git_poll_interval_seconds",
            "git.poll_interval of kiln.toml, so alerts can be written in multiples of it",
            poll_interval.clone(),
        );
        let clusters = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "clusters",
            "Clusters kiln knows, by phase",
            clusters.clone(),
        );
        for p in PHASES {
            // Creates the series at 0; the guard it returns is not needed.
            drop(clusters.get_or_create(&PhaseLabel {
                phase: p.to_string(),
            }));
        }
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Plan steps run, by kind and result (ok, wait: the machine is not there yet, error, \
             blocked: refused until a person acts)",
            actions.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests to Proxmox, Vault, Git and Talos, by system and operation, each attempt \
             counted (retries too)",
            requests.clone(),
        );
        let request_errors = Family::<RequestLabels, Counter>::default();
        registry.register(
            "request_errors",
            "Requests of kiln_requests_total that failed: no answer, or an error answer (an \
             absent Vault key is an answer, not an error)",
            request_errors.clone(),
        );
        let ha_leader = Gauge::default();
        registry.register(
            "ha_leader",
            "1 while this instance acts: with [ha], while it holds the Lease (0 while it \
             follows); without [ha], always (exactly one instance of a group should say 1)",
            ha_leader.clone(),
        );
        let git_reachable = Gauge::default();
        registry.register(
            "git_reachable",
            "1 when the last fetch of the Git remote worked, 0 when it failed (0 before the first)",
            git_reachable.clone(),
        );
        let webhooks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Git webhook deliveries, by how they were answered",
            webhooks.clone(),
        );
        for d in Delivery::ALL {
            drop(webhooks.get_or_create(&ResultLabel {
                result: d.as_str().into(),
            }));
        }
        let cluster_phase = Family::<ClusterPhaseLabels, Gauge>::default();
        registry.register(
            "cluster_phase",
            "1 for the phase each cluster is in, 0 for the others",
            cluster_phase.clone(),
        );
        let cluster_failing = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_reconcile_failing",
            "1 when the cluster's last turn ended in an error (backing off, Failed, Blocked, an \
             invalid file); its text is in kiln status",
            cluster_failing.clone(),
        );
        let applied_revision = Family::<RevisionLabels, Gauge>::default();
        registry.register(
            "cluster_applied_revision",
            "Info-style: 1, labelled with the intent revision whose apply last succeeded (one \
             series per cluster)",
            applied_revision.clone(),
        );
        let credential_expiry = Family::<CredentialLabels, FloatGauge>::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When each stored credential (kubeconfig, talosconfig) expires (Unix time)",
            credential_expiry.clone(),
        );
        let credential_left = Family::<CredentialLabels, FloatGauge>::default();
        registry.register(
            "credential_expires_in_seconds",
            "Time left before each stored credential expires, at the scrape (negative once expired)",
            credential_left.clone(),
        );
        let backup_last_success = Family::<ClusterLabel, FloatGauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the cluster's last etcd snapshot that verified was taken (Unix time; 0 before the \
             first)",
            backup_last_success.clone(),
        );
        let backup_size = Family::<ClusterLabel, Gauge>::default();
        registry.register_with_unit(
            "backup_size",
            "Size of the cluster's last verified etcd snapshot as stored (encrypted)",
            Unit::Bytes,
            backup_size.clone(),
        );
        let backup_failures = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "backup_failures",
            "etcd snapshot attempts that failed (the stream, the destination, the database check or \
             the read-back)",
            backup_failures.clone(),
        );
        let backup_failed_checks = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "backup_failed_checks",
            "Snapshots at the destination whose read-back check failed at the last attempt \
             (truncated, altered, no manifest)",
            backup_failed_checks.clone(),
        );
        let backup_schedule = Family::<ClusterLabel, Gauge>::default();
        registry.register_with_unit(
            "backup_schedule",
            "The cluster's spec.backup.schedule",
            Unit::Seconds,
            backup_schedule.clone(),
        );
        Self {
            registry,
            cycles,
            cycle_duration,
            clusters,
            last_cycle,
            cycle_started,
            cycle_running,
            poll_interval,
            actions,
            requests,
            request_errors,
            git_reachable,
            ha_leader,
            webhooks,
            cluster_phase,
            cluster_failing,
            applied_revision,
            credential_expiry,
            credential_left,
            backup_last_success,
            backup_size,
            backup_failures,
            backup_failed_checks,
            backup_schedule,
            exported: Mutex::new(Exported::default()),
        }
    }

    pub fn set_ha_leader(&self, leading: bool) {
        self.ha_leader.set(i64::from(leading));
    }

    pub fn set_poll_interval(&self, d: Duration) {
        self.poll_interval.set(d.as_secs_f64());
    }

    pub fn cycle_started(&self) {
        self.cycle_started.set(unix_seconds(SystemTime::now()));
        self.cycle_running.set(1);
    }

    /// A finished cycle: its result and time, and what each cluster was left in.
    pub fn cycle_done(&self, ok: bool, took: Duration, status: &StatusBook) {
        let result = if ok { "ok" } else { "error" };
        self.cycles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.cycle_duration.observe(took.as_secs_f64());
        self.last_cycle.set(unix_seconds(SystemTime::now()));
        self.cycle_running.set(0);
        for p in PHASES {
            let n = status.clusters.values().filter(|c| c.phase == p).count();
            self.clusters
                .get_or_create(&PhaseLabel {
                    phase: p.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.clusters_seen(status.clusters.values());
    }

    /// Sets every per-cluster series from `clusters` and removes those of clusters, credentials
    /// and revisions no longer there.
    fn clusters_seen<'a>(&self, clusters: impl Iterator<Item = &'a ClusterStatus>) {
        let mut now = Exported::default();
        for c in clusters {
            let name = c.name.clone();
            for p in PHASES {
                self.cluster_phase
                    .get_or_create(&ClusterPhaseLabels {
                        cluster: name.clone(),
                        phase: p.to_string(),
                    })
                    .set(i64::from(c.phase == p));
            }
            now.phase.insert(name.clone());
            self.cluster_failing
                .get_or_create(&ClusterLabel {
                    cluster: name.clone(),
                })
                .set(i64::from(c.last_error.is_some()));
            now.failing.insert(name.clone());
            if let Some(rev) = &c.last_applied_revision {
                self.applied_revision
                    .get_or_create(&RevisionLabels {
                        cluster: name.clone(),
                        revision: rev.clone(),
                    })
                    .set(1);
                now.revision.insert(name.clone(), rev.clone());
            }
            if let Some(b) = &c.backup {
                let label = ClusterLabel {
                    cluster: name.clone(),
                };
                let at = b
                    .last_success_at
                    .as_deref()
                    .and_then(|t| {
                        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .map_or(0.0, |t| t.unix_timestamp() as f64);
                self.backup_last_success.get_or_create(&label).set(at);
                self.backup_size
                    .get_or_create(&label)
                    .set(i64::try_from(b.last_size_bytes.unwrap_or(0)).unwrap_or(i64::MAX));
                self.backup_failed_checks
                    .get_or_create(&label)
                    .set(i64::from(b.failed_checks));
                self.backup_schedule
                    .get_or_create(&label)
                    .set(i64::try_from(b.schedule_seconds).unwrap_or(i64::MAX));
                // Exists at 0 from the first attempt, so `increase()` sees the first failure.
                drop(self.backup_failures.get_or_create(&label));
                now.backup.insert(name.clone());
            }
            for (cred, s) in &c.credentials {
                let Ok(at) = OffsetDateTime::parse(
                    &s.expires_at,
                    &time::format_description::well_known::Rfc3339,
                ) else {
                    continue;
                };
                let at = at.unix_timestamp() as f64;
                self.credential_expiry
                    .get_or_create(&CredentialLabels {
                        cluster: name.clone(),
                        credential: cred.as_str(),
                    })
                    .set(at);
                now.expiry.insert((name.clone(), cred.as_str()), at);
            }
        }
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for gone in exported.phase.difference(&now.phase) {
            for p in PHASES {
                self.cluster_phase.remove(&ClusterPhaseLabels {
                    cluster: gone.clone(),
                    phase: p.to_string(),
                });
            }
        }
        for gone in exported.failing.difference(&now.failing) {
            self.cluster_failing.remove(&ClusterLabel {
                cluster: gone.clone(),
            });
        }
        for gone in exported.backup.difference(&now.backup) {
            let label = ClusterLabel {
                cluster: gone.clone(),
            };
            self.backup_last_success.remove(&label);
            self.backup_size.remove(&label);
            self.backup_failed_checks.remove(&label);
            self.backup_schedule.remove(&label);
            self.backup_failures.remove(&label);
        }
        for (cluster, rev) in &exported.revision {
            if now.revision.get(cluster) != Some(rev) {
                self.applied_revision.remove(&RevisionLabels {
                    cluster: cluster.clone(),
                    revision: rev.clone(),
                });
            }
        }
        for (cluster, credential) in exported.expiry.keys() {
            if !now.expiry.contains_key(&(cluster.clone(), credential)) {
                let labels = CredentialLabels {
                    cluster: cluster.clone(),
                    credential,
                };
                self.credential_expiry.remove(&labels);
                self.credential_left.remove(&labels);
            }
        }
        *exported = now;
    }

    /// A failed etcd snapshot attempt of `cluster`.
    pub fn backup_failed(&self, cluster: &str) {
        self.backup_failures
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .inc();
    }

    /// One step of a plan, as the executor settled it.
    pub fn action(&self, action: &Action, result: ActionResult) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: action_kind(action),
                result: result.as_str(),
            })
            .inc();
    }

    /// One request to an external system; `op` is a fixed name (an HTTP method, a gRPC method,
    /// `fetch`), never a path with an id in it.
    pub fn request(&self, system: System, op: &'static str, ok: bool) {
        let labels = RequestLabels {
            system: system.as_str(),
            op,
        };
        self.requests.get_or_create(&labels).inc();
        if !ok {
            self.request_errors.get_or_create(&labels).inc();
        }
        if system == System::Git && op == "fetch" {
            self.git_reachable.set(i64::from(ok));
        }
    }

    pub fn webhook(&self, d: Delivery) {
        self.webhooks
            .get_or_create(&ResultLabel {
                result: d.as_str().into(),
            })
            .inc();
    }

    /// The text exposition Prometheus scrapes (OpenMetrics 1.0, ending in `# EOF`).
    pub fn render(&self) -> String {
        self.refresh_time_left(unix_seconds(SystemTime::now()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same in the classic text format (0.0.4), which names a counter's family with its
    /// `_total` and has no `# UNIT` or `# EOF` lines.
    pub fn render_classic(&self) -> String {
        classic(&self.render())
    }

    /// Time left is a function of the scrape's clock, so it is computed here rather than left as
    /// it was at the end of the last cycle (which may be a poll interval ago, or hours into a
    /// rolling upgrade).
    fn refresh_time_left(&self, now: f64) {
        let exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for ((cluster, credential), at) in &exported.expiry {
            self.credential_left
                .get_or_create(&CredentialLabels {
                    cluster: cluster.clone(),
                    credential,
                })
                .set(at - now);
        }
    }
}

/// OpenMetrics text → the classic text format: the only differences in what this registry writes
/// are the counter families' names and the two line kinds the classic parser does not know.
fn classic(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts one request in the process's metrics (the adapters' one-line hook).
pub fn request(system: System, op: &'static str, ok: bool) {
    global().request(system, op, ok);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::renewal::Credential;
    use crate::reconcile::status::CredentialStatus;

    fn cluster(name: &str, phase: Phase, rev: &str) -> ClusterStatus {
        let mut c = ClusterStatus::continued(name, None);
        c.phase = phase;
        c.last_applied_revision = Some(rev.into());
        c.credentials.insert(
            Credential::Kubeconfig,
            CredentialStatus {
                expires_at: "2030-01-01T00:00:00Z".into(),
                issued_at: None,
                version: Some(1),
                expires_in_seconds: None,
            },
        );
        c
    }

    fn book(clusters: Vec<ClusterStatus>) -> StatusBook {
        let mut b = StatusBook::default();
        for c in clusters {
            b.clusters.insert(c.name.clone(), c);
        }
        b
    }

    fn lines_with(text: &str, needle: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_cluster_that_leaves_takes_its_series_with_it_and_a_new_revision_replaces_the_old() {
        let m = Metrics::new();
        m.cycle_done(
            true,
            Duration::from_millis(5),
            &book(vec![
                cluster("alpha", Phase::Ready, "aaa111"),
                cluster("beta", Phase::Failed, "bbb222"),
            ]),
        );
        let text = m.render();
        assert!(
            text.contains(r#"kiln_cluster_applied_revision{cluster="beta",revision="bbb222"} 1"#)
        );
        assert!(text.contains(r#"kiln_cluster_phase{cluster="beta",phase="Failed"} 1"#));
        assert!(text.contains(r#"kiln_credential_expiry_timestamp_seconds{cluster="beta",credential="kubeconfig"} 1893456000"#));
        assert_eq!(
            lines_with(
                &text,
                r#"kiln_credential_expires_in_seconds{cluster="alpha""#
            )
            .len(),
            1
        );

        m.cycle_done(
            true,
            Duration::from_millis(5),
            &book(vec![cluster("alpha", Phase::Ready, "ccc333")]),
        );
        let text = m.render();
        assert!(
            lines_with(&text, "beta").is_empty(),
            "beta's series stayed:\n{text}"
        );
        assert!(
            text.contains(r#"kiln_cluster_applied_revision{cluster="alpha",revision="ccc333"} 1"#)
        );
        assert!(!text.contains("aaa111"), "the old revision stayed:\n{text}");
        assert!(text.contains(r#"kiln_clusters{phase="Failed"} 0"#));
        assert!(text.contains(r#"kiln_clusters{phase="Ready"} 1"#));
    }

    #[test]
    fn backup_series_follow_the_status_and_leave_with_the_cluster() {
        let m = Metrics::new();
        let mut a = cluster("alpha", Phase::Ready, "r");
        a.backup = Some(crate::reconcile::status::BackupStatus {
            last_success_at: Some("2026-12-05T05:00:00Z".into()),
            last_size_bytes: Some(4096),
            failed_checks: 1,
            schedule_seconds: 21600,
            ..Default::default()
        });
        m.backup_failed("alpha");
        m.cycle_done(true, Duration::ZERO, &book(vec![a]));
        let text = m.render_classic();
        for line in [
            r#"kiln_backup_last_success_timestamp_seconds{cluster="alpha"} 1796446800"#,
            r#"kiln_backup_size_bytes{cluster="alpha"} 4096"#,
            r#"kiln_backup_failed_checks{cluster="alpha"} 1"#,
            r#"kiln_backup_schedule_seconds{cluster="alpha"} 21600"#,
            r#"kiln_backup_failures_total{cluster="alpha"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        m.cycle_done(true, Duration::ZERO, &book(vec![]));
        assert!(
            !m.render().contains("kiln_backup_size_bytes{"),
            "series stayed"
        );
    }

    #[test]
    fn time_left_is_computed_at_the_scrape() {
        let m = Metrics::new();
        m.cycle_done(
            true,
            Duration::ZERO,
            &book(vec![cluster("alpha", Phase::Ready, "r")]),
        );
        m.refresh_time_left(1_893_456_000.0 - 86_400.0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(r#"kiln_credential_expires_in_seconds{cluster="alpha",credential="kubeconfig"} 86400"#),
            "{out}"
        );
    }

    #[test]
    fn the_classic_format_names_counter_families_with_their_total() {
        let m = Metrics::new();
        m.request(System::Talos, "Version", true);
        let text = m.render_classic();
        assert!(
            text.contains("# TYPE kiln_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kiln_requests_total Requests"),
            "{text}"
        );
        assert!(text.contains("# TYPE kiln_git_reachable gauge\n"), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn requests_count_errors_apart_and_git_fetches_set_reachability() {
        let m = Metrics::new();
        m.request(System::Git, "fetch", false);
        assert!(m.render().contains("kiln_git_reachable 0"));
        m.request(System::Git, "fetch", true);
        m.request(System::Proxmox, "GET", true);
        let text = m.render();
        assert!(text.contains("kiln_git_reachable 1"));
        assert!(text.contains(r#"kiln_requests_total{system="git",op="fetch"} 2"#));
        assert!(text.contains(r#"kiln_request_errors_total{system="git",op="fetch"} 1"#));
        assert!(lines_with(&text, r#"kiln_request_errors_total{system="proxmox""#).is_empty());
    }
}
