//! One cluster's turn in a cycle: observe (cheaply when it can), plan, run the steps in order, and
//! report. The turn's context is `turn`, the step handlers are in `steps`, the order, batching and
//! error policy in `executor`; this module drives them and maps how the run ended onto the status.
//!
//! A step ends in one of three ways: done (go on), waiting (a node still boots, the API is not up
//! yet: come back soon, no error), or failed — a refusal is `Blocked` at once, anything else backs off
//! (keyed on the intent revision and the action) and is `Failed` after `max_failures` in a row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tracing::Instrument;

use super::backoff::Backoff;
use super::error::TurnError;
use super::executor::{Execution, Executor, action_key};
use super::observe::{self, Depth};
use super::ports::Ports;
use super::records::ClusterRecord;
use super::status::{ClusterStatus, NodeStatus, Phase, VmState};
use super::turn::{BOOT_TIMEOUT, Turn};
use crate::config::{DriftPolicy, OnDecommission};
use crate::plan::{
    self, Action, Blocker, ClusterPlan, ConvergeInput, DecommissionInput, ObservedCluster,
};
use crate::proxmox::Inventory;
use crate::secrets::{MetadataPatch, Prefix, SecretPaths, meta_keys};
use crate::spec::{Cluster, Node};

/// Engine-wide settings a cluster's turn needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub drift_policy: DriftPolicy,
    pub prefix: Prefix,
    pub on_decommission: OnDecommission,
    /// Consecutive failures of one action (same intent revision) before the cluster is `Failed`.
    pub max_failures: u32,
    pub drain_timeout: Duration,
    /// How soon to look again at a cluster that waits for a machine (boot, install, API).
    pub wait_interval: Duration,
    /// `[talos] boot_timeout`: a started VM whose node never answered by then gets a condition.
    pub boot_timeout: Duration,
    /// `[talos] credential_lifetime`: the life of the kubeconfig and talosconfig kiln stores.
    pub credential_lifetime: Duration,
    /// `[talos] upgrade_timeout`: how long an upgraded node gets to come back healthy.
    pub upgrade_timeout: Duration,
}

/// A line of progress for people watching (`kiln demo`, `run --once` logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub cluster: String,
    pub message: String,
}

/// What every job shares.
#[derive(Clone)]
pub struct Ctx {
    pub ports: Ports,
    pub backoff: Arc<Mutex<Backoff>>,
    pub settings: Arc<Settings>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    /// Touched on progress; systemd's watchdog is fed only while it is (crate::systemd).
    pub liveness: crate::systemd::Liveness,
}

/// A cluster with a valid file.
pub struct ConvergeJob {
    pub cluster: Cluster,
    pub path: String,
    pub text: String,
    pub revision: String,
    /// The spec last applied (renumbering is judged against it; scale-down finds leaving IPs in it).
    pub previous: Option<Cluster>,
    pub record: ClusterRecord,
    pub inventory: Arc<Inventory>,
    /// The drift timer says: look at secrets, Talos and Kubernetes even if the listing looks right.
    pub deep: bool,
    pub previous_status: Option<ClusterStatus>,
}

/// A cluster whose file is gone, grace over, removal commit pushed.
pub struct DecommissionJob {
    pub name: crate::spec::ClusterName,
    pub last: Option<Cluster>,
    pub record: ClusterRecord,
    pub inventory: Arc<Inventory>,
    pub previous_status: Option<ClusterStatus>,
}

/// What the engine does with a cluster after its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ready: nothing more happens without a change.
    Converged,
    /// Decommission confirmed: drop the record and the status.
    Forget,
    /// Waits for a person (Blocked, Failed): settled; `recheck` is when a daemon looks anyway.
    Stuck { recheck: Option<Duration> },
    /// Not there yet: look again after this long.
    Requeue(Duration),
    /// Shutdown stopped the turn; the next start takes it up.
    Interrupted,
}

impl Next {
    /// Nothing more will happen without a change (Ready, Blocked, Failed).
    pub fn settled(self) -> bool {
        matches!(self, Next::Converged | Next::Forget | Next::Stuck { .. })
    }

    pub fn converged(self) -> bool {
        matches!(self, Next::Converged | Next::Forget)
    }

    /// When this cluster wants its next look.
    pub fn wake_in(self) -> Option<Duration> {
        match self {
            Next::Requeue(d) => Some(d),
            Next::Stuck { recheck } => recheck,
            Next::Converged | Next::Forget | Next::Interrupted => None,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub status: ClusterStatus,
    /// The record to keep (`None`: leave the records as they are).
    pub record: Option<ClusterRecord>,
    pub next: Next,
}

impl Outcome {
    pub fn settled(&self) -> bool {
        self.next.settled()
    }

    pub fn converged(&self) -> bool {
        self.next.converged()
    }

    pub fn wake_in(&self) -> Option<Duration> {
        self.next.wake_in()
    }

    pub fn forget(&self) -> bool {
        self.next == Next::Forget
    }
}

fn executor<'a>(ctx: &'a Ctx, cluster: &'a str, revision: &'a str) -> Executor<'a> {
    Executor {
        cluster,
        revision,
        backoff: &ctx.backoff,
        shutdown: &ctx.shutdown,
        max_failures: ctx.settings.max_failures,
    }
}

/// Converges one cluster with a valid intent file.
pub async fn converge(ctx: Ctx, job: ConvergeJob) -> Outcome {
    let span = tracing::info_span!("cluster", cluster = %job.cluster.name);
    converge_inner(&ctx, &job).instrument(span).await
}

async fn converge_inner(ctx: &Ctx, job: &ConvergeJob) -> Outcome {
    let cluster = &job.cluster;
    let name = cluster.name.as_str().to_owned();
    let mut status = ClusterStatus::continued(&name, job.previous_status.as_ref());
    status.set_condition("SpecValid", true, "Valid", &job.path);
    let mut record = job.record.clone();
    record.protected = cluster.spec.deletion_protection;
    if record.applied_revision.is_none() {
        // Until a first success, the newest text is the one kiln may have made VMs for.
        record.spec_text = job.text.clone();
        record.path = job.path.clone();
    }

    let paths = SecretPaths::for_cluster(&ctx.settings.prefix, &cluster.name);
    let intent_changed = record.applied_revision.as_deref() != Some(job.revision.as_str());
    let first_apply = record.applied_revision.is_none();
    let mut turn = Turn::new(
        ctx,
        &name,
        Some(cluster),
        job.previous.as_ref(),
        &job.inventory,
        paths.clone(),
    );
    turn.cluster_uid = record.cluster_uid.clone();
    turn.started = record.started_at.clone();

    let mut seen = observe::listing(&job.inventory, cluster);
    let cheap = !intent_changed
        && !job.deep
        && record.cluster_uid.is_some()
        && observe::matches_intent(&seen.observed, cluster);
    if !cheap {
        let listing_only = seen.observed;
        seen = match observe::cluster(&ctx.ports, &job.inventory, &paths, cluster, Depth::Deep)
            .await
        {
            Ok(seen) => seen,
            Err(e) => {
                status.nodes = node_statuses(cluster, &listing_only, &turn.stages, Some(&status));
                let next = observation_failed(&mut status, &e, ctx.settings.wait_interval * 5);
                return Outcome {
                    status,
                    record: Some(record),
                    next,
                };
            }
        };
        if seen.uid_mirror_missing
            && let Some(b) = &seen.bundle
        {
            // A crash between the bundle's value and its metadata: finish the write (§5's mirror).
            let patch = MetadataPatch::from([(
                meta_keys::CLUSTER_UID.to_owned(),
                Some(b.cluster_uid.clone()),
            )]);
            if let Err(e) = ctx
                .ports
                .secrets
                .patch_metadata(&paths.secrets, &patch)
                .await
            {
                status.last_error = Some(format!(
                    "secret store: repairing the cluster-uid mirror: {e}"
                ));
                return Outcome {
                    status,
                    record: Some(record),
                    next: Next::Requeue(ctx.settings.wait_interval * 5),
                };
            }
            turn.say("repaired the bundle's cluster-uid metadata (a write was cut short)");
        }
        status.credentials = std::mem::take(&mut seen.credentials);
        turn.bundle = seen.bundle.take();
        turn.stages = std::mem::take(&mut seen.stages);
        record.deep_checked_at = Some(OffsetDateTime::now_utc());
        if let Some(b) = &turn.bundle {
            record.cluster_uid = b.cluster_uid.parse().ok();
        }
    }
    let mut observed = seen.observed;
    super::upgrade_record::attach(&mut record, &mut observed, &job.revision);

    let plan = plan::converge(ConvergeInput {
        desired: cluster,
        previous: job.previous.as_ref(),
        observed: &observed,
        drift_policy: ctx.settings.drift_policy,
        intent_changed,
    });
    for r in &plan.reports {
        tracing::warn!(cluster = %name, "{r}");
    }
    if !plan.blockers.is_empty() {
        let msg = blockers_message(&plan);
        status.phase = Phase::Blocked;
        status.last_error = Some(msg.clone());
        status.retry_at = None;
        status.set_condition("Blocked", true, "NeedsAPerson", &msg);
        status.nodes = node_statuses(
            cluster,
            &observed,
            &turn.stages,
            job.previous_status.as_ref(),
        );
        super::upgrade_record::show_versions(
            &mut status.nodes,
            cluster,
            &super::upgrade_record::versions_of(&observed),
        );
        return Outcome {
            status,
            record: Some(record),
            next: Next::Stuck { recheck: None },
        };
    }
    status.conditions.retain(|c| c.kind != "Blocked");

    if !plan.steps.is_empty() {
        turn.say(format!(
            "{} step(s): {}",
            plan.steps.len(),
            plan.steps
                .iter()
                .map(|s| action_key(&s.action))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let execution = executor(ctx, &name, &job.revision)
        .execute(&mut turn, &plan.steps)
        .await;
    super::upgrade_record::after(&mut record, &execution, &job.revision);
    let mut versions = super::upgrade_record::versions_of(&observed);
    if let Some(b) = &turn.bundle {
        record.cluster_uid = b.cluster_uid.parse().ok();
    }
    turn.note_silent_nodes(cluster);
    record.started_at = turn.started.clone();
    status.credentials.append(&mut turn.credentials);
    status.conditions.retain(|c| c.kind != BOOT_TIMEOUT);
    for note in &turn.notes {
        status.set_condition(note.kind, true, note.reason, &note.message);
    }
    if matches!(execution, Execution::Complete)
        && !plan.steps.is_empty()
        && let Ok(identity) = turn.talos_identity()
    {
        // The steps moved the machines on: report the stages they ended at.
        let all: Vec<&Node> = cluster.nodes.iter().collect();
        let states = observe::talos_states(ctx.ports.talos.as_ref(), &identity, &all).await;
        turn.stages = states.into_iter().map(|(n, (_, st))| (n, st)).collect();
    }
    if !plan.steps.is_empty()
        && let Ok(identity) = turn.talos_identity()
    {
        // The steps moved the machines on (a rollout ends the turn after each node, a new node runs
        // its template's version): show the versions they left.
        versions =
            super::upgrade_record::running_now(ctx.ports.talos.as_ref(), &identity, cluster).await;
    }
    status.nodes = node_statuses(
        cluster,
        &observed,
        &turn.stages,
        job.previous_status.as_ref(),
    );
    super::upgrade_record::show_versions(&mut status.nodes, cluster, &versions);
    if !plan.steps.is_empty()
        && let Some(kube) = turn.kube().await
        && let Ok(kubelets) = kube.kubelet_versions().await
    {
        // A Kubernetes hop moved the kubelets on: show what their Nodes report now.
        for row in &mut status.nodes {
            if let Some(v) = kubelets.get(&row.name) {
                row.kubernetes_version = Some(v.clone());
            }
        }
    }
    if !matches!(execution, Execution::Complete) {
        return unfinished_outcome(
            ctx.settings.wait_interval,
            status,
            record,
            execution,
            |action| phase_of(action, first_apply, intent_changed),
        );
    }
    record.applied_revision = Some(job.revision.clone());
    record.spec_text = job.text.clone();
    record.path = job.path.clone();
    status.phase = if plan.reports.iter().any(|r| r.is_drift()) {
        Phase::Degraded
    } else {
        Phase::Ready
    };
    // Drift left unrepaired (`report`) is named on the status, not only in the log.
    let drift: Vec<String> = plan
        .reports
        .iter()
        .filter(|r| r.is_drift())
        .map(|r| r.to_string())
        .collect();
    status.conditions.retain(|c| c.kind != "Drift");
    if !drift.is_empty() {
        status.set_condition("Drift", true, "Reported", &drift.join("; "));
    }
    status.last_applied_revision = Some(job.revision.clone());
    status.last_error = None;
    status.retry_at = None;
    status.set_condition(
        "Healthy",
        true,
        "AllNodesReady",
        "every expected node is Ready",
    );
    if !plan.steps.is_empty() {
        // What the steps changed shows in the next listing; report it from there.
        for n in &mut status.nodes {
            if matches!(n.vm_state, VmState::Absent | VmState::Stopped) {
                n.vm_state = VmState::Running;
            }
        }
        for (number, stage) in &turn.stages {
            if let Some(node) = cluster.node(*number)
                && let Some(s) = status.nodes.iter_mut().find(|s| s.name == node.name)
            {
                s.talos_stage = stage.clone();
            }
        }
    }
    Outcome {
        status,
        record: Some(record),
        next: Next::Converged,
    }
}

/// A look that could not be made: the same policy as a step's error. A refusal (the store denies
/// kiln's token, its TLS set-up is wrong) is `Blocked` until a person fixes it — each cycle looks
/// again, so the fix is seen; anything else is looked at again after `again`.
fn observation_failed(status: &mut ClusterStatus, e: &TurnError, again: Duration) -> Next {
    let report = e.report();
    status.last_error = Some(report.clone());
    match e.refusal() {
        Some(refusal) => {
            status.phase = Phase::Blocked;
            status.retry_at = None;
            status.set_condition("Blocked", true, refusal.reason(), &report);
            Next::Stuck { recheck: None }
        }
        None => Next::Requeue(again),
    }
}

/// Decommissions one cluster whose file is gone (removal commit already pushed).
pub async fn decommission(ctx: Ctx, job: DecommissionJob) -> Outcome {
    let span = tracing::info_span!("cluster", cluster = %job.name);
    decommission_inner(&ctx, &job).instrument(span).await
}

async fn decommission_inner(ctx: &Ctx, job: &DecommissionJob) -> Outcome {
    let name = job.name.as_str().to_owned();
    let mut status = ClusterStatus::continued(&name, job.previous_status.as_ref());
    let paths = SecretPaths::for_cluster(&ctx.settings.prefix, &job.name);
    let mut turn = Turn::new(
        ctx,
        &name,
        None,
        job.last.as_ref(),
        &job.inventory,
        paths.clone(),
    );
    turn.cluster_uid = job.record.cluster_uid.clone();
    let observed = match observe::leaving(&ctx.ports, &job.inventory, &paths, &name).await {
        Ok((observed, uid)) => {
            if let Some(uid) = uid.and_then(|u| u.parse().ok()) {
                turn.cluster_uid = Some(uid);
            }
            observed
        }
        Err(e) => {
            let next = observation_failed(&mut status, &e, ctx.settings.wait_interval * 5);
            return Outcome {
                status,
                record: Some(job.record.clone()),
                next,
            };
        }
    };
    let plan = plan::decommission(DecommissionInput {
        name: &job.name,
        protected: job.record.protected,
        observed: &observed,
        destroy_secrets: ctx.settings.on_decommission == OnDecommission::Destroy,
    });
    if !plan.blockers.is_empty() {
        let msg = blockers_message(&plan);
        status.phase = Phase::Blocked;
        status.last_error = Some(msg.clone());
        status.set_condition("Blocked", true, "DeletionProtection", &msg);
        return Outcome {
            status,
            record: Some(job.record.clone()),
            next: Next::Stuck { recheck: None },
        };
    }
    status.phase = Phase::Deleting;
    // The removal commit is pushed (the engine runs this turn only then); nothing is destroyed yet.
    crate::testhook::reached("decommission-started");
    // The spec's text keys the backoff: a decommission has no intent revision of its own.
    let revision = format!("decommission:{}", job.record.spec_text.len());
    match executor(ctx, &name, &revision)
        .execute(&mut turn, &plan.steps)
        .await
    {
        Execution::Complete => {
            turn.say("decommissioned");
            status.last_error = None;
            Outcome {
                status,
                record: None,
                next: Next::Forget,
            }
        }
        unfinished => unfinished_outcome(
            ctx.settings.wait_interval,
            status,
            job.record.clone(),
            unfinished,
            |_| Phase::Deleting,
        ),
    }
}

/// The outcome of a turn that did not run every step: waiting for a machine (looked at again soon),
/// refused (`Blocked`), failing (backoff), given up (`Failed`), or interrupted by shutdown.
fn unfinished_outcome(
    wait_interval: Duration,
    mut status: ClusterStatus,
    record: ClusterRecord,
    execution: Execution,
    phase: impl Fn(&Action) -> Phase,
) -> Outcome {
    let next = match execution {
        Execution::Complete | Execution::Interrupted => Next::Interrupted,
        Execution::Waiting { action, why } => {
            status.phase = phase(&action);
            status.last_error = None;
            status.retry_at = None;
            status.set_condition("Progressing", true, "Waiting", &why);
            Next::Requeue(wait_interval)
        }
        Execution::Blocked {
            action,
            refusal,
            why,
        } => {
            status.phase = Phase::Blocked;
            status.last_error = Some(format!("{}: {why}", action_key(&action)));
            status.retry_at = None;
            status.set_condition("Blocked", true, refusal.reason(), &why);
            Next::Stuck { recheck: None }
        }
        Execution::Failed { action, error, .. } => {
            status.phase = Phase::Failed;
            status.last_error = Some(format!("{}: {error}", action_key(&action)));
            status.retry_at = None;
            Next::Stuck { recheck: None }
        }
        Execution::BackingOff {
            action,
            error,
            until,
            ..
        } => {
            status.phase = phase(&action);
            status.last_error = Some(format!("{}: {error}", action_key(&action)));
            status.retry_at = Some(retry_at(until));
            Next::Requeue(until.saturating_duration_since(Instant::now()))
        }
    };
    Outcome {
        status,
        record: Some(record),
        next,
    }
}

fn retry_at(until: Instant) -> OffsetDateTime {
    OffsetDateTime::now_utc() + until.saturating_duration_since(Instant::now())
}

fn phase_of(action: &Action, first_apply: bool, intent_changed: bool) -> Phase {
    match action {
        // A rollout is an update even when it finishes a first apply or follows drift.
        Action::UpgradeTalos { .. }
        | Action::UpgradeKubernetes { .. }
        | Action::SyncManifests { .. } => Phase::Updating,
        Action::DestroyVm { .. } | Action::RetireSecrets { .. } => Phase::Deleting,
        Action::GenerateSecrets
        | Action::CreateVm { .. }
        | Action::FinishVm { .. }
        | Action::ApplyConfig { .. }
            if first_apply =>
        {
            Phase::Provisioning
        }
        Action::Bootstrap { .. } | Action::StoreCredentials | Action::WaitHealthy
            if first_apply =>
        {
            Phase::Bootstrapping
        }
        _ if intent_changed => Phase::Updating,
        _ => Phase::Degraded,
    }
}

fn node_statuses(
    cluster: &Cluster,
    observed: &ObservedCluster,
    stages: &BTreeMap<u32, String>,
    previous: Option<&ClusterStatus>,
) -> Vec<NodeStatus> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let vm = observed.vms.get(&n.number);
            let stage = stages.get(&n.number).cloned().unwrap_or_else(|| {
                previous
                    .and_then(|p| p.nodes.iter().find(|s| s.name == n.name))
                    .map(|s| s.talos_stage.clone())
                    .unwrap_or_else(|| "-".into())
            });
            NodeStatus {
                name: n.name.clone(),
                vmid: n.vmid.get(),
                ip: n.ip,
                role: n.role.as_str().to_owned(),
                vm_state: vm.map(|v| v.power).into(),
                talos_stage: if vm.is_none() { "-".into() } else { stage },
                talos_version: previous
                    .and_then(|p| p.nodes.iter().find(|s| s.name == n.name))
                    .and_then(|s| s.talos_version.clone()),
                kubernetes_version: observed
                    .kubernetes
                    .as_ref()
                    .and_then(|k| k.running.get(&n.number))
                    .and_then(|r| r.kubelet)
                    .map(|v| v.to_string())
                    .or_else(|| {
                        previous
                            .and_then(|p| p.nodes.iter().find(|s| s.name == n.name))
                            .and_then(|s| s.kubernetes_version.clone())
                    }),
            }
        })
        .collect()
}

fn blockers_message(plan: &ClusterPlan) -> String {
    plan.blockers
        .iter()
        .map(|b| match b {
            Blocker::Refused(m) | Blocker::Blocked(m) => m.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
