//! The loop of DESIGN.md §7: fetch → load → decide what is rendered → commit and push if the output
//! changed → observe Proxmox (one listing) → converge each cluster (in parallel up to `concurrency`)
//! → decommission what was removed (only after its removal commit is pushed) → status.
//!
//! The safety rules before any destructive step are decided in `policy` (pure); this module gathers
//! their inputs and does what they say, in their order: records on disk before any action, publish
//! before destroy, and a cluster leaves the records only once Proxmox confirms its VMs are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::backoff::{Backoff, BackoffPolicy};
use super::policy::{self, Missing, MissingTurn, Rules, recorded_cluster};
pub use super::policy::{Intent, ValidIntent};
use super::ports::Ports;
use super::records::{ClusterRecord, Records, SharedRecords, SharedRecordsError};
use super::status::{ClusterStatus, Phase, StatusBook};
use super::worker::{self, ConvergeJob, Ctx, DecommissionJob, Next, Outcome, Progress, Settings};
use crate::config::Config;
use crate::git::{GitSource, PublishOutcome, Rendered, Snapshot};
use crate::render::RenderSettings;
use crate::secrets::Prefix;
use crate::spec::{Cluster, ClusterName};

/// A cluster's turn in a cycle, queued until a slot is free.
enum Turn<'a> {
    Converge(&'a ClusterName, &'a policy::ValidIntent),
    Decommission(&'a ClusterName),
}

/// What a publish did, for the steps after it.
struct Published {
    pushed: Option<String>,
    /// The output at the tip is what this cycle wants.
    ok: bool,
    /// Clusters with a file at the tip rendered last (empty when nothing was rendered).
    present_at_tip: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    /// Every cluster is Ready, Blocked or Failed: nothing more happens without a change.
    pub settled: bool,
    /// Every cluster is Ready (and nothing stopped the cycle).
    pub converged: bool,
    pub wake_in: Option<Duration>,
    /// What stopped the cycle short (Git or Proxmox unreachable).
    pub error: Option<String>,
    /// Whether this cycle pushed a commit.
    pub pushed: Option<String>,
    /// Why the remote could not be fetched this cycle (the cycle may still have run on the last
    /// revision fetched): what `/readyz` reports about Git.
    pub git_error: Option<String>,
}

/// Told of every finished cycle: the daemon's HTTP surface (status, `/readyz`, `/metrics`) reads the
/// engine through this, so the engine knows nothing of HTTP.
pub trait CycleObserver: Send + Sync {
    /// A cycle begins: a long one (a rolling upgrade) is work going on, not a stalled loop.
    fn cycle_started(&self) {}
    fn cycle_done(&self, report: &CycleReport, status: &StatusBook, took: Duration);
}

/// `[ha]`: whether this instance leads (`crate::ha::LeaderGate`). Only the leader runs cycles; a
/// cycle during which the lease was lost leaves the status as it was (its refused writes are not
/// the clusters' failures).
pub trait Leadership: Send + Sync {
    fn check(&self) -> bool;
    fn until_leading(&self)
    -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

pub struct Engine {
    leadership: Option<Arc<dyn Leadership>>,
    /// The process's shutdown; `ctx.shutdown` (what the executor checks before each step) also
    /// turns true while this instance does not lead.
    shutdown: watch::Receiver<bool>,
    /// Sets `ctx.shutdown` with `[ha]` (see [`stop_acting`]).
    stop: Option<Arc<watch::Sender<bool>>>,
    config: Arc<Config>,
    git: GitSource,
    ctx: Ctx,
    records: Records,
    status: StatusBook,
    render_settings: RenderSettings,
    observer: Option<Arc<dyn CycleObserver>>,
    /// `[ha]`: the records every instance shares; `records` is then this instance's copy, read
    /// afresh at the start of each cycle it leads (`records.json` in `state_dir` mirrors it).
    shared: Option<SharedRecords>,
    /// Scheduled etcd snapshots (issue 30); `None` until the daemon's loop runs (`run --once` and
    /// `kiln plan` take none).
    backups: Option<super::backup::Scheduler>,
    /// The tip last read, its snapshot and what its files say (with `[ha]`'s refusals applied).
    last_read: Option<(crate::git::ObjectId, Arc<Snapshot>, Arc<Intent>)>,
}

impl Engine {
    pub fn new(
        config: Config,
        git: GitSource,
        ports: Ports,
        shutdown: watch::Receiver<bool>,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<Self, std::io::Error> {
        let records = Records::load(&config.state_dir)?;
        let status = StatusBook::load(&config.state_dir)?;
        let prefix = Prefix::parse(&config.secrets.prefix).map_err(std::io::Error::other)?;
        let settings = Settings {
            drift_policy: config.reconcile.drift_policy,
            prefix,
            on_decommission: config.secrets.on_decommission,
            max_failures: config.reconcile.max_failures.max(1),
            drain_timeout: Duration::from_secs(300),
            wait_interval: Duration::from_secs(2),
            boot_timeout: config.talos.boot_timeout,
            credential_lifetime: config.talos.credential_lifetime,
            upgrade_timeout: config.talos.upgrade_timeout,
        };
        let backoff = Backoff::new(BackoffPolicy {
            initial: config.reconcile.retry_initial,
            max: config
                .reconcile
                .retry_max
                .max(config.reconcile.retry_initial),
            jitter: 0.2,
        });
        let render_settings = RenderSettings::from_config(&config);
        let shutdown_rx = shutdown.clone();
        Ok(Self {
            ctx: Ctx {
                ports,
                backoff: Arc::new(Mutex::new(backoff)),
                settings: Arc::new(settings),
                shutdown,
                progress,
                liveness: crate::systemd::Liveness::new(),
            },
            config: Arc::new(config),
            git,
            records,
            status,
            render_settings,
            observer: None,
            shared: None,
            backups: None,
            last_read: None,
            leadership: None,
            shutdown: shutdown_rx,
            stop: None,
        })
    }

    /// Tells `observer` of every cycle from now on.
    pub fn with_observer(mut self, observer: Arc<dyn CycleObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs cycles only while `leadership` says this instance leads.
    /// Must be called inside the runtime: a task keeps the executor's stop signal in step.
    pub fn with_leadership(mut self, leadership: Arc<dyn Leadership>) -> Self {
        // The executor looks at `ctx.shutdown` before each step: with the lease lost it stops the
        // turn there, quietly, as for a shutdown. Kubernetes calls are not gated one by one, so
        // this is what keeps a former leader from going on to them.
        let (tx, rx) = watch::channel(*self.shutdown.borrow());
        let tx = Arc::new(tx);
        tokio::spawn(stop_acting(
            self.shutdown.clone(),
            leadership.clone(),
            tx.clone(),
        ));
        self.ctx.shutdown = rx;
        self.stop = Some(tx);
        self.leadership = Some(leadership);
        self
    }

    /// Keeps the records in the secret store every instance shares (`[ha]`), instead of only in
    /// this instance's `state_dir`: the instance that takes the Lease carries on what another began.
    pub fn with_shared_records(mut self, shared: SharedRecords) -> Self {
        self.shared = Some(shared);
        self
    }

    /// `[ha]`, at the start of a cycle: the shared records replace this instance's copy, which
    /// may be a lease old (or older: it may never have led). When no instance wrote them yet, this
    /// instance's own records become them (a single kiln that turned on `[ha]` keeps what it knew).
    async fn read_shared_records(&mut self) -> Result<(), SharedRecordsError> {
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        match shared.load().await? {
            Some(records) => self.records = records,
            None => {
                tracing::info!(path = %shared.path(), clusters = self.records.clusters.len(), "no shared records yet: writing this instance's");
                shared.save(&self.records).await?;
            }
        }
        Ok(())
    }

    /// `[ha]`: writes the records where every instance reads them, if they changed.
    async fn save_shared_records(&mut self) -> Result<(), SharedRecordsError> {
        match &mut self.shared {
            Some(shared) => shared.save(&self.records).await,
            None => Ok(()),
        }
    }

    /// A refused write of the shared records at the end of a step of the cycle: the next cycle
    /// reads them again, so nothing is lost but this cycle's own changes.
    fn shared_records_not_saved(&self, e: &SharedRecordsError) {
        if self.lost_leadership() {
            tracing::info!(error = %e, "not the leader: the shared records are left to the leader");
        } else {
            tracing::warn!(error = %e, "cannot save the shared records");
        }
    }

    fn lost_leadership(&self) -> bool {
        self.leadership.as_ref().is_some_and(|l| !l.check())
    }

    pub fn status(&self) -> &StatusBook {
        &self.status
    }

    /// Touches `liveness` on progress from now on (the daemon's watchdog relay reads it).
    pub fn with_liveness(mut self, liveness: crate::systemd::Liveness) -> Self {
        self.ctx.liveness = liveness;
        self
    }

    fn persist(&self) {
        if let Err(e) = self.records.save(&self.config.state_dir) {
            tracing::error!(error = %e, "cannot save records");
        }
        if let Err(e) = self.status.save(&self.config.state_dir) {
            tracing::error!(error = %e, "cannot save status");
        }
    }

    /// Marks every known cluster with a cycle-level problem, changing nothing else.
    fn cycle_failed(&mut self, error: String) -> CycleReport {
        tracing::warn!("{error}");
        let now = OffsetDateTime::now_utc();
        for s in self.status.clusters.values_mut() {
            s.last_error = Some(error.clone());
            s.updated_at = now;
        }
        self.persist();
        CycleReport {
            settled: false,
            converged: false,
            wake_in: Some(Duration::from_secs(5)),
            error: Some(error),
            pushed: None,
            git_error: None,
        }
    }

    /// One pass of the loop. Never panics on a system being down: it reports and waits.
    pub async fn cycle(&mut self) -> CycleReport {
        let started = std::time::Instant::now();
        // A leader that just took over must not wait for the next tick of `stop_acting`.
        if let (Some(stop), Some(l)) = (&self.stop, &self.leadership) {
            set_stop(stop, *self.shutdown.borrow() || !l.check());
        }
        self.ctx.liveness.touch();
        if let Some(o) = &self.observer {
            o.cycle_started();
        }
        let report = self.cycle_inner().await;
        self.ctx.liveness.touch();
        if let Some(o) = &self.observer {
            o.cycle_done(&report, &self.status, started.elapsed());
        }
        report
    }

    async fn cycle_inner(&mut self) -> CycleReport {
        // [ha]: what the previous leader recorded, before anything is decided from the records.
        if let Err(e) = self.read_shared_records().await {
            if self.lost_leadership() {
                return not_leading(&e);
            }
            return self.cycle_failed(format!("{e}; nothing is done until they can be read"));
        }
        // `kiln rotate` asks the lock holder (DESIGN §7); served first, whatever Git says.
        self.serve_requests().await;
        // Holds (`kiln restore`): acknowledged here, between cycles, where no turn runs; a held
        // cluster gets no turn, no decommission and no snapshot until its hold is gone.
        let held = super::hold::held(&self.config.state_dir);
        for hold in held.values() {
            if let Err(e) = super::hold::acknowledge(&self.config.state_dir, hold) {
                tracing::warn!(error = %e, cluster = %hold.cluster, "cannot acknowledge a hold");
            }
        }
        let mut git_error = None;
        if let Err(e) = self.git.poll().await {
            git_error = Some(format!("git: {e}"));
        }
        let Some(rev) = self.git.current().await else {
            let mut report = self.cycle_failed(
                git_error
                    .clone()
                    .unwrap_or_else(|| "git: no revision fetched yet".into()),
            );
            report.git_error = git_error;
            return report;
        };
        if let Some(e) = &git_error {
            tracing::warn!(
                "{e}; working from the last revision fetched, {rev}; nothing is decommissioned"
            );
        }
        // A commit never changes: an unchanged tip reuses the files read and loaded the last time
        // (reading and validating 1,000 files was half of a no-op cycle's CPU; benches/scale.rs).
        let (snapshot, intent) = match &self.last_read {
            Some((read, snapshot, intent)) if *read == rev => (snapshot.clone(), intent.clone()),
            _ => {
                let snapshot = match self.git.snapshot(rev).await {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        let mut report = self.cycle_failed(format!("git: reading {rev}: {e}"));
                        report.git_error = Some(format!("git: reading {rev}: {e}"));
                        return report;
                    }
                };
                let mut intent = Intent::read(&snapshot);
                if self.config.ha.is_some() {
                    super::backup::refuse_local_destinations(&mut intent);
                }
                let intent = Arc::new(intent);
                self.last_read = Some((rev, snapshot.clone(), intent.clone()));
                (snapshot, intent)
            }
        };

        // Records: new valid clusters are recorded (kiln may make VMs for them from now on); a file
        // that came back cancels its decommission.
        if policy::record_intent(&mut self.records, &intent) {
            // On disk before any action: a crash while its first VMs are cloned must not forget that
            // kiln may have made VMs and a bundle for the cluster (its decommission needs the record).
            if let Err(e) = self.records.save(&self.config.state_dir) {
                return self.cycle_failed(format!("cannot save records: {e}"));
            }
            // Shared too, for the same reason: a successor must know the cluster may have VMs.
            if let Err(e) = self.save_shared_records().await {
                if self.lost_leadership() {
                    return not_leading(&e);
                }
                return self.cycle_failed(format!("{e}; no action before they are saved"));
            }
        }
        let rules = Rules {
            allow_empty: self.config.reconcile.allow_empty,
            decommission_grace: self.config.reconcile.decommission_grace,
        };
        let missing = policy::missing_clusters(
            &mut self.records,
            &intent,
            git_error.is_none(),
            rules,
            OffsetDateTime::now_utc(),
        );

        // Render and publish before applying (§7): not gated on health, once per intent.
        let Published {
            pushed,
            ok: publish_ok,
            present_at_tip,
        } = self.publish(&snapshot, &intent, &missing).await;

        // Observe Proxmox: one listing for every cluster.
        let inventory = match self.ctx.ports.proxmox.observe().await {
            Ok(inv) => Arc::new(inv),
            Err(e) => {
                let mut report = self.cycle_failed(format!("proxmox: {e}"));
                report.pushed = pushed;
                report.git_error = git_error;
                return report;
            }
        };

        let mut outcomes: Vec<Outcome> = Vec::new();
        // Each turn is queued by name and made into a task only when one of `concurrency` slots is
        // free: a turn's future is some 16 KiB and its job clones the cluster, its text and its
        // record, so spawning all 1,000 of a fleet at once held 15 MiB of them waiting on a permit
        // (the daemon's peak RSS; benches/scale.rs, heaptrack).
        let mut queue: Vec<Turn<'_>> = Vec::new();
        for (name, v) in &intent.valid {
            if let Some(hold) = held.get(name.as_str()) {
                outcomes.push(self.held_by_outcome(name, hold));
                continue;
            }
            queue.push(Turn::Converge(name, v));
        }
        for (name, state) in &missing {
            if let Some(hold) = held.get(name.as_str()) {
                outcomes.push(self.held_by_outcome(name, hold));
                continue;
            }
            let at_tip = present_at_tip.contains(name.as_str());
            match policy::missing_turn(*state, publish_ok, at_tip) {
                MissingTurn::Returned => {
                    let record = self.records.clusters.get(name).cloned().unwrap_or_default();
                    outcomes.push(self.returned_outcome(name, &record))
                }
                MissingTurn::Decommission => queue.push(Turn::Decommission(name)),
                MissingTurn::Hold => {
                    let record = self.records.clusters.get(name).cloned().unwrap_or_default();
                    outcomes.push(self.held_outcome(name, &record, *state, publish_ok))
                }
            }
        }
        for (name, (path, message)) in &intent.invalid {
            outcomes.push(self.invalid_outcome(name, path, message));
        }
        let slots = self.config.reconcile.concurrency.max(1);
        let mut queue = queue.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < slots {
                let Some(turn) = queue.next() else { break };
                let ctx = self.ctx.clone();
                match turn {
                    Turn::Converge(name, v) => {
                        let job = self.converge_job(name, v, &inventory);
                        tasks.spawn(crate::systemd::with_liveness(
                            ctx.liveness.clone(),
                            worker::converge(ctx, job),
                        ));
                    }
                    Turn::Decommission(name) => {
                        let record = self.records.clusters.get(name).cloned().unwrap_or_default();
                        let job = DecommissionJob {
                            name: name.clone(),
                            last: recorded_cluster(&record),
                            record,
                            inventory: inventory.clone(),
                            previous_status: self.status.clusters.get(name.as_str()).cloned(),
                        };
                        tasks.spawn(crate::systemd::with_liveness(
                            ctx.liveness.clone(),
                            worker::decommission(ctx, job),
                        ));
                    }
                }
            }
            match tasks.join_next().await {
                Some(Ok(o)) => outcomes.push(o),
                Some(Err(e)) => tracing::error!(error = %e, "a cluster task panicked"),
                None => break,
            }
        }

        let lost = self.lost_leadership();
        if lost {
            tracing::info!(
                "the lease was lost during this cycle: its writes were withheld, the status is left as it was"
            );
        }
        let mut report = CycleReport {
            settled: !lost,
            // The generated files are part of the result: a cycle that could not publish them (a
            // template override that never ends, a push refused) has not converged, whatever the VMs.
            converged: git_error.is_none() && publish_ok,
            wake_in: None,
            error: git_error.clone(),
            pushed,
            git_error,
        };
        for mut o in outcomes {
            // A hold that ended leaves no `Held` condition behind.
            if !held.contains_key(o.status.name.as_str()) {
                o.status.conditions.retain(|c| c.kind != "Held");
            }
            report.settled &= o.settled();
            report.converged &= o.converged();
            if let Some(w) = o.wake_in() {
                report.wake_in = Some(report.wake_in.map_or(w, |x: Duration| x.min(w)));
            }
            let name = o.status.name.clone();
            if o.forget() {
                self.records.clusters.remove(name.as_str());
                self.status.clusters.remove(&name);
                continue;
            }
            // Only clusters with a valid name ever get a record (an invalid file's outcome has none).
            if let Some(r) = o.record
                && let Ok(key) = name.parse::<ClusterName>()
            {
                self.records.clusters.insert(key, r);
            }
            if !lost {
                self.status.clusters.insert(name, o.status);
            }
        }
        // Statuses of clusters Git no longer names and kiln never managed.
        let records = &self.records;
        self.status
            .clusters
            .retain(|name, _| intent.present(name) || records.clusters.contains_key(name.as_str()));
        if let Some(b) = &self.backups
            && !lost
        {
            let clusters = intent
                .valid
                .values()
                .filter(|v| !held.contains_key(v.cluster.name.as_str()))
                .map(|v| v.cluster.clone())
                .collect();
            b.tick(clusters, &mut self.status, time::OffsetDateTime::now_utc());
        }
        self.persist();
        if let Err(e) = self.save_shared_records().await {
            self.shared_records_not_saved(&e);
        }
        report
    }

    async fn serve_requests(&mut self) {
        let server = super::requests::Server {
            state_dir: &self.config.state_dir,
            store: self.ctx.ports.secrets.as_ref(),
            prefix: &self.ctx.settings.prefix,
            records: &self.records,
            lifetime: self.config.talos.credential_lifetime,
        };
        let replies = server.serve_pending().await;
        let mut changed = false;
        for reply in &replies {
            changed |= super::requests::record_in(&mut self.status, reply);
            self.ctx.liveness.touch();
            if let Some(tx) = &self.ctx.progress {
                let _ = tx.send(Progress {
                    cluster: reply.cluster.clone(),
                    message: super::requests::summary(reply),
                });
            }
        }
        if changed {
            self.persist();
        }
    }

    fn held_outcome(
        &self,
        name: &str,
        record: &ClusterRecord,
        state: Missing,
        publish_ok: bool,
    ) -> Outcome {
        let mut status = self.base_status(name);
        let verdict =
            policy::held_verdict(state, &record.path, publish_ok, OffsetDateTime::now_utc());
        status.phase = verdict.phase;
        status.last_error = Some(verdict.message.clone());
        status.set_condition("FilePresent", false, "Deleted", &verdict.message);
        let next = match (verdict.settled, verdict.wake_in) {
            (true, recheck) => Next::Stuck { recheck },
            (false, wake) => Next::Requeue(wake.unwrap_or(Duration::from_secs(1))),
        };
        Outcome {
            status,
            record: Some(record.clone()),
            next,
        }
    }

    /// A cluster under a hold (`reconcile::hold`): left exactly as it is — its status (with a `Held`
    /// condition saying by what), its record — and looked at again soon, for when the hold goes.
    /// A valid cluster's turn, with what the engine knows of it now.
    fn converge_job(
        &self,
        name: &ClusterName,
        v: &policy::ValidIntent,
        inventory: &Arc<crate::proxmox::Inventory>,
    ) -> ConvergeJob {
        let record = self.records.clusters.get(name).cloned().unwrap_or_default();
        let previous = policy::previous_cluster(&record, v);
        let deep = drift_check_due(
            name,
            record.deep_checked_at,
            OffsetDateTime::now_utc(),
            self.config.reconcile.drift_interval,
        );
        ConvergeJob {
            cluster: v.cluster.clone(),
            path: v.path.clone(),
            text: v.text.clone(),
            revision: v.revision.clone(),
            previous,
            record,
            inventory: inventory.clone(),
            deep,
            previous_status: self.status.clusters.get(name.as_str()).cloned(),
        }
    }

    fn held_by_outcome(&self, name: &str, hold: &super::hold::Hold) -> Outcome {
        let mut status = self.base_status(name);
        let message = format!(
            "held by {} since {}: kiln does not act on this cluster until it ends",
            hold.by, hold.since
        );
        status.set_condition("Held", true, "Hold", &message);
        Outcome {
            status,
            record: self.records.clusters.get(name).cloned(),
            next: Next::Requeue(Duration::from_secs(2)),
        }
    }

    fn returned_outcome(&self, name: &str, record: &ClusterRecord) -> Outcome {
        let mut status = self.base_status(name);
        let message = format!(
            "{} came back while kiln was pushing the removal of its files: the decommission is \
             cancelled, nothing was destroyed",
            record.path
        );
        status.last_error = None;
        status.set_condition("FilePresent", true, "Restored", &message);
        let mut record = record.clone();
        record.missing_since = None;
        Outcome {
            status,
            record: Some(record),
            // The next cycle reads the tip that has the file and converges the cluster from it.
            next: Next::Requeue(Duration::from_millis(200)),
        }
    }

    fn invalid_outcome(&self, name: &str, path: &str, message: &str) -> Outcome {
        let mut status = self.base_status(name);
        status.phase = Phase::Blocked;
        let text = format!(
            "{path} is invalid; the cluster is left as it is until the file is fixed:\n{message}"
        );
        status.last_error = Some(text.clone());
        status.set_condition("SpecValid", false, "Invalid", &text);
        Outcome {
            status,
            record: None,
            next: Next::Stuck { recheck: None },
        }
    }

    fn base_status(&self, name: &str) -> ClusterStatus {
        ClusterStatus::continued(name, self.status.clusters.get(name))
    }

    /// Commits the generated files when they changed. Says whether the output at the tip is now
    /// what this cycle wants (decommission may go on only then) and which clusters have a file at
    /// the tip that was rendered last, which is newer than `snapshot` after a rejected push.
    async fn publish(
        &mut self,
        snapshot: &Snapshot,
        intent: &Intent,
        missing: &BTreeMap<ClusterName, Missing>,
    ) -> Published {
        let held = policy::held(missing);
        let wanted = policy::output_clusters(intent, &self.records, &held);
        let key = policy::publish_key(&self.render_settings, &wanted, &snapshot.templates);
        if self.records.published_key.as_deref() == Some(key.as_str()) {
            return Published {
                pushed: None,
                ok: true,
                present_at_tip: BTreeSet::new(),
            };
        }
        let records = self.records.clone();
        let settings = self.render_settings.clone();
        let changed = policy::changed_clusters(intent, &records, missing);
        // What the last render saw: the clusters with a file at its tip, and the key of its output.
        let mut last_render: Option<(BTreeSet<String>, String)> = None;
        let render = |snap: &Snapshot| -> Result<Rendered, crate::render::RenderError> {
            // The tip may have moved since this cycle read it: decide again from what is there.
            let intent = Intent::read(snap);
            let wanted = policy::output_clusters(&intent, &records, &held);
            let present = intent
                .valid
                .keys()
                .map(ClusterName::to_string)
                .chain(intent.invalid.keys().cloned())
                .collect();
            last_render = Some((
                present,
                policy::publish_key(&settings, &wanted, &snap.templates),
            ));
            let clusters: Vec<Cluster> = wanted.into_iter().map(|(c, _)| c).collect();
            // Overrides are the repository's code: bounded, and off the runtime (DESIGN.md §8).
            let rendered = crate::render::render_bounded(
                clusters,
                &settings,
                &snap.templates,
                crate::render::DEADLINE,
            )?;
            // Rendered paths are repository-relative; the commit takes them relative to output_dir.
            let prefix = format!("{}/", settings.output_dir.trim_end_matches('/'));
            let files = rendered
                .into_iter()
                .map(|(path, bytes)| match path.strip_prefix(&prefix) {
                    Some(inner) => (inner.to_owned(), bytes),
                    None => (path, bytes),
                })
                .collect();
            Ok(Rendered {
                files,
                clusters_changed: changed.clone(),
            })
        };
        let result = self.git.publish(render).await;
        let (present_at_tip, key) = last_render.unwrap_or((BTreeSet::new(), key));
        match result {
            Ok(PublishOutcome::Pushed { commit, .. }) => {
                tracing::info!(%commit, "pushed the generated files");
                self.ctx.liveness.touch();
                if let Some(tx) = &self.ctx.progress {
                    let _ = tx.send(Progress {
                        cluster: "*".into(),
                        message: format!("committed and pushed the generated files ({commit})"),
                    });
                }
                self.records.published_key = Some(key);
                self.persist();
                if let Err(e) = self.save_shared_records().await {
                    self.shared_records_not_saved(&e);
                }
                Published {
                    pushed: Some(commit.to_string()),
                    ok: true,
                    present_at_tip,
                }
            }
            Ok(PublishOutcome::NoChange { .. }) => {
                self.records.published_key = Some(key);
                Published {
                    pushed: None,
                    ok: true,
                    present_at_tip,
                }
            }
            Err(e) if self.lost_leadership() => {
                tracing::info!(error = %e, "not the leader: the generated files are left to the leader");
                Published {
                    pushed: None,
                    ok: false,
                    present_at_tip,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish the generated files; retrying next cycle");
                for s in self.status.clusters.values_mut() {
                    s.set_condition("Committed", false, "PublishFailed", &e.to_string());
                }
                Published {
                    pushed: None,
                    ok: false,
                    present_at_tip,
                }
            }
        }
    }

    /// `kiln run --once`: cycles until every cluster converged or is stuck, or until `timeout`.
    pub async fn run_once(&mut self, timeout: Duration) -> CycleReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.shutdown.clone();
        loop {
            let report = self.cycle().await;
            if report.settled && report.error.is_none() {
                return report;
            }
            if *shutdown.borrow() {
                return report;
            }
            let wait = report
                .wake_in
                .unwrap_or(Duration::from_secs(2))
                .clamp(Duration::from_millis(200), Duration::from_secs(5));
            let now = tokio::time::Instant::now();
            if now + wait >= deadline {
                let mut report = report;
                report.error.get_or_insert_with(|| {
                    format!(
                        "not converged within {}",
                        humantime::format_duration(timeout)
                    )
                });
                return report;
            }
            self.ctx.liveness.idle_for(wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The daemon: a cycle per trigger (poll timer, a local repository's change, a poke) and whenever a
    /// cluster asked to be looked at again; returns when `shutdown` turns true, after the current step.
    pub async fn run(&mut self, trigger: crate::git::Trigger) {
        let mut shutdown = self.shutdown.clone();
        let poll = self.config.git.poll_interval;
        self.backups = super::backup::Scheduler::for_engine(
            &self.config,
            &self.ctx.ports,
            &self.ctx.settings.prefix,
            self.leadership.clone(),
        );
        loop {
            if let Some(leadership) = self.leadership.clone()
                && !leadership.check()
            {
                tracing::info!("following: waiting for the lease");
                tokio::select! {
                    _ = leadership.until_leading() => tracing::info!("leading: reconciling"),
                    _ = shutdown.changed() => {
                        tracing::info!("shutting down");
                        return;
                    }
                }
            }
            let report = self.cycle().await;
            if *shutdown.borrow() {
                tracing::info!("shutting down");
                return;
            }
            let wait = report.wake_in.map_or(poll, |w| w.min(poll));
            // Waiting for the next trigger is the engine at rest, not stalled: alive until then.
            self.ctx
                .liveness
                .idle_for(wait.max(Duration::from_millis(200)));
            tokio::select! {
                _ = trigger.wait(wait.max(Duration::from_millis(200))) => {}
                _ = shutdown.changed() => {
                    tracing::info!("shutting down");
                    return;
                }
            }
        }
    }
}

/// A cycle that stopped because this instance no longer leads: the clusters' status stays as it
/// was (the refused write is not their failure), and the loop goes back to following.
fn not_leading(e: &SharedRecordsError) -> CycleReport {
    tracing::info!(error = %e, "not the leader: this cycle does nothing more");
    CycleReport {
        wake_in: Some(Duration::from_secs(1)),
        ..CycleReport::default()
    }
}

/// Keeps `stop` equal to "shutting down, or not the leader". The gate shuts by the clock, with no
/// event, so it is looked at every 100 ms (a fraction of any renew deadline).
async fn stop_acting(
    mut shutdown: watch::Receiver<bool>,
    leadership: Arc<dyn Leadership>,
    stop: Arc<watch::Sender<bool>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let down = *shutdown.borrow();
        set_stop(&stop, down || !leadership.check());
        if down {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            r = shutdown.changed() => if r.is_err() { return },
            _ = stop.closed() => return,
        }
    }
}

fn set_stop(stop: &watch::Sender<bool>, value: bool) {
    stop.send_if_modified(|v| {
        let changed = *v != value;
        *v = value;
        changed
    });
}

/// Whether a cluster's deep check (secrets, Talos, Kubernetes) is due. Each cluster owns a fixed
/// moment within every `interval`, taken from a hash of its name, and is looked at once per interval
/// after that moment: the checks of many clusters spread evenly instead of all landing together
/// after a restart.
pub fn drift_check_due(
    name: &str,
    last: Option<OffsetDateTime>,
    now: OffsetDateTime,
    interval: Duration,
) -> bool {
    let Some(last) = last else { return true };
    let period = interval.as_secs().max(1);
    let digest = Sha256::digest(name.as_bytes());
    let offset = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % period;
    let slot = |t: OffsetDateTime| (t.unix_timestamp().max(0) as u64 + offset) / period;
    slot(now) > slot(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn deep_checks_come_once_per_interval_at_each_clusters_own_moment() {
        let interval = Duration::from_secs(600);
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert!(drift_check_due("a", None, t0, interval));
        for name in ["a", "b", "production", "staging"] {
            // Checked now: due again at its moment within the next interval.
            let due: Vec<i64> = (1..=1200)
                .filter(|s| {
                    drift_check_due(name, Some(t0), t0 + time::Duration::seconds(*s), interval)
                })
                .collect();
            assert!(
                !due.is_empty() && due[0] <= 600,
                "{name}: {:?}",
                due.first()
            );
        }
        // Different clusters get different moments.
        let first_due = |name: &str| {
            (1..=600)
                .find(|s| {
                    drift_check_due(name, Some(t0), t0 + time::Duration::seconds(*s), interval)
                })
                .unwrap()
        };
        let moments: BTreeSet<i64> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|n| first_due(n))
            .collect();
        assert!(moments.len() > 3, "{moments:?}");
    }
}
