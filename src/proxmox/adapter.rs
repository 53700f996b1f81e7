//! The PVE API adapter of [`ProxmoxPort`]: crash-safe lifecycle steps, each decided from what
//! Proxmox says now, so a crash or a lost reply at any point converges on the next call.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::client::{Api, retry};
use super::error::ProxmoxError;
use super::inventory::{Inventory, Ownership};
use super::ownership::{self, Verdict, VmIdentity};
use super::preflight::{self, PreflightScope};
use super::task::{self, TaskOutcome};
use super::vmconfig::{BOOT_DISK, VmSpec, drive_size_bytes, volumes_of};
use super::{Created, OwnedVm, PendingChanges, ProxmoxPort, Resized};
use crate::config::ProxmoxConfig;

type Config = Map<String, Value>;

/// What sits at a VMID kiln wants.
enum Slot {
    Empty,
    /// kiln's clone still copying disks (lock `clone`): waited for, never repeated.
    CloneRunning,
    HalfMade,
    Owned,
}

pub struct PveAdapter {
    api: Api,
    task_timeout: Duration,
    shutdown_timeout: Duration,
    clones: Option<Arc<Semaphore>>,
    /// The preflight's listing, until the first observation takes it.
    first_listing: Mutex<Option<(Instant, bytes::Bytes)>>,
}

/// How old the preflight's listing may be when the first cycle takes it.
const LISTING_REUSE: Duration = Duration::from_secs(10);

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        _ => None,
    }
}

impl PveAdapter {
    pub fn from_config(cfg: &ProxmoxConfig) -> Result<Self, ProxmoxError> {
        Self::from_config_wrapped(cfg, |t| t)
    }

    /// As [`Self::from_config`], every request passing through `wrap` first (`crate::ha`).
    pub fn from_config_wrapped(
        cfg: &ProxmoxConfig,
        wrap: impl FnOnce(Arc<dyn crate::proxmox::Transport>) -> Arc<dyn crate::proxmox::Transport>,
    ) -> Result<Self, ProxmoxError> {
        Ok(Self::new(
            Api::from_config(cfg)?.wrap_transport(wrap),
            cfg.task_timeout,
            cfg.shutdown_timeout,
            cfg.max_parallel_clones,
        ))
    }

    pub fn new(
        api: Api,
        task_timeout: Duration,
        shutdown_timeout: Duration,
        max_parallel_clones: u32,
    ) -> Self {
        Self {
            api,
            task_timeout,
            shutdown_timeout,
            clones: (max_parallel_clones > 0)
                .then(|| Arc::new(Semaphore::new(max_parallel_clones as usize))),
            first_listing: Mutex::new(None),
        }
    }

    /// Names every missing privilege, per path, before anything changes (DESIGN.md §3). Only the VMs
    /// still to be made (absent, or half-made) are asked about: a VM that exists needs nothing new
    /// from the token that a 403 at its use would not name as clearly, and a no-op start stays at
    /// two requests — the listing (kept for the first cycle) and the answer for `/`.
    pub async fn preflight(&self, scope: &PreflightScope) -> Result<(), ProxmoxError> {
        let body = self.listing().await?;
        let inventory = Inventory::from_listing_json(&body)?;
        *self.first_listing.lock().expect("listing lock") = Some((Instant::now(), body));
        let to_create: Vec<&preflight::WantedVm> = scope
            .vms
            .iter()
            .filter(|vm| match inventory.get(vm.vmid) {
                None => true,
                Some(seen) => matches!(seen.ownership, Ownership::HalfMade(_)),
            })
            .collect();

        let mut held = BTreeMap::new();
        let root = self.held_at("/").await?;
        let audit = root.contains("Sys.Audit");
        held.insert("/".to_owned(), root);
        if to_create.is_empty() {
            return Self::verdict(&preflight::required(&[], &BTreeMap::new(), false), &held);
        }

        let mut template_nets = BTreeMap::new();
        let templates: BTreeSet<u32> = to_create.iter().map(|vm| vm.template).collect();
        for t in templates {
            // A template that is not there is named by check_template when its clone is planned.
            let Some(node) = inventory.template_node(t) else {
                continue;
            };
            match self.read_config(node, t).await {
                Ok(Some(cfg)) => {
                    template_nets.insert(t, preflight::nets_of(&cfg));
                }
                // Unreadable without VM.Audit on the template, which the list below names.
                Ok(None) | Err(ProxmoxError::Permission { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Without Sys.Audit the tag policy cannot be read; Sys.Audit is named, and Sys.Modify is
        // asked for only once the policy can say whether it is needed.
        let sys_modify = audit && {
            let options = self.api.get("/cluster/options", &[]).await?;
            let tags: BTreeSet<String> = to_create
                .iter()
                .flat_map(|vm| vm.tags.iter().cloned())
                .collect();
            preflight::tags_need_sys_modify(&options, &tags)
        };
        let need = preflight::required(&to_create, &template_nets, sys_modify);
        let paths: BTreeSet<&str> = need
            .iter()
            .flat_map(|n| n.via.iter().map(String::as_str))
            .filter(|p| !held.contains_key(*p))
            .collect();
        let answers = futures::future::try_join_all(paths.iter().map(|p| self.held_at(p))).await?;
        held.extend(paths.into_iter().map(str::to_owned).zip(answers));
        Self::verdict(&need, &held)
    }

    fn verdict(
        need: &[preflight::Need],
        held: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), ProxmoxError> {
        let missing = preflight::missing(need, held);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ProxmoxError::MissingPrivileges(missing))
        }
    }

    /// What the token holds on one concrete path, as PVE resolves it.
    async fn held_at(&self, path: &str) -> Result<BTreeSet<String>, ProxmoxError> {
        let answer = self
            .api
            .get("/access/permissions", &[("path", path.to_owned())])
            .await?;
        Ok(preflight::held_at(&answer))
    }

    async fn listing(&self) -> Result<bytes::Bytes, ProxmoxError> {
        let params = [("type", "vm".to_owned())];
        retry(self.api.retry, "/cluster/resources", || {
            self.api
                .call_raw(Method::GET, "/cluster/resources", &params, None)
        })
        .await
    }

    /// A clone onto another node (`target=`) needs every volume of the template and the target
    /// storage on shared storage (qemu-server `clone_vm`: "can't clone VM to node … (VM uses local
    /// storage)", "can't clone to non-shared storage"). The flag comes from `GET /storage`, which lists
    /// a storage to a token with `Datastore.Audit` or `Datastore.AllocateSpace` on it (pve-storage
    /// `src/PVE/API2/Storage/Config.pm`); `GET /storage/{id}` needs `Datastore.Allocate`.
    async fn check_shared(
        &self,
        spec: &VmSpec,
        template_node: &str,
        template: &Config,
    ) -> Result<(), ProxmoxError> {
        let t = spec.template.get();
        let listed = self.api.get("/storage", &[]).await?;
        let shared: BTreeMap<&str, bool> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let id = s.get("storage")?.as_str()?;
                Some((id, text(s.get("shared")).as_deref() == Some("1")))
            })
            .collect();
        let judge = |storage: &str| match shared.get(storage) {
            Some(true) => None,
            Some(false) => Some(format!("storage {storage} is not shared")),
            None => Some(format!(
                "storage {storage} is not listed to kiln's token (grant Datastore.Audit on \
                 /storage/{storage}), so it cannot be known to be shared"
            )),
        };
        let mut problems = Vec::new();
        for v in volumes_of(template) {
            let why = match &v.storage {
                Some(storage) => judge(storage),
                None => Some("a path outside any storage is never shared".to_owned()),
            };
            if let Some(why) = why {
                problems.push(format!("volume {} ({}): {why}", v.key, v.volume));
            }
        }
        if let Some(why) = judge(&spec.storage) {
            problems.push(format!("target {why}"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ProxmoxError::Config(format!(
            "VM {} goes to {} but template {t} is on {template_node}; a clone to another node needs \
             shared storage: {}. Give a template per node (`template: {{{}: <vmid>}}`)",
            spec.id.name,
            spec.id.pve_node,
            problems.join("; "),
            spec.id.pve_node
        )))
    }

    fn vm_path(node: &str, vmid: u32) -> String {
        format!("/nodes/{node}/qemu/{vmid}")
    }

    /// The VM's configuration, or `None` when there is no VM with that id on the node.
    async fn read_config(&self, node: &str, vmid: u32) -> Result<Option<Config>, ProxmoxError> {
        match self
            .api
            .get(&format!("{}/config", Self::vm_path(node, vmid)), &[])
            .await
        {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(other) => Err(ProxmoxError::Protocol(format!("config of {vmid}: {other}"))),
            Err(ProxmoxError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn is_running(&self, node: &str, vmid: u32) -> Result<bool, ProxmoxError> {
        let st = self
            .api
            .get(
                &format!("{}/status/current", Self::vm_path(node, vmid)),
                &[],
            )
            .await?;
        match st.get("status").and_then(Value::as_str) {
            Some("running") | Some("paused") => Ok(true),
            Some("stopped") => Ok(false),
            other => Err(ProxmoxError::Protocol(format!(
                "VM {vmid} status {other:?} is neither running nor stopped"
            ))),
        }
    }

    /// Reads the VM again and proves ownership again: the check right before a modifying call.
    async fn reverify(
        &self,
        id: &VmIdentity,
        node: &str,
    ) -> Result<(OwnedVm, Config), ProxmoxError> {
        let vmid = id.vmid.get();
        let cfg = self
            .read_config(node, vmid)
            .await?
            .ok_or_else(|| ProxmoxError::NotFound(format!("VM {vmid} on {node}")))?;
        let running = self.is_running(node, vmid).await?;
        let owned = OwnedVm::verify(id, node, &cfg, running)?;
        Ok((owned, cfg))
    }

    async fn wait(&self, data: Value) -> Result<TaskOutcome, ProxmoxError> {
        let upid = task::upid_of(&data)?;
        task::wait(&self.api, &upid, self.task_timeout).await
    }

    /// A POST (or DELETE) that must not be repeated blindly: before every try, `done` looks at
    /// Proxmox (re-checking ownership); only when the goal is not reached yet is the call sent.
    async fn act<F, Fut>(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        vmid: u32,
        done: F,
    ) -> Result<Option<TaskOutcome>, ProxmoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<bool, ProxmoxError>>,
    {
        let policy = self.api.retry;
        let mut n = 0;
        loop {
            if done().await? {
                return Ok(None);
            }
            let result = match self
                .api
                .call(method.clone(), path, params, Some(vmid))
                .await
            {
                Ok(data) => self.wait(data).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(e) if e.is_transient() => {
                    // Another try only within the tries and the step's budget (crate::retry).
                    let Some(wait) = policy.next_delay(n + 1) else {
                        return Err(e);
                    };
                    tracing::warn!(%path, error = %e, "no result; looking again before repeating");
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn slot(&self, id: &VmIdentity) -> Result<Slot, ProxmoxError> {
        let vmid = id.vmid.get();
        let Some(cfg) = self.read_config(&id.pve_node, vmid).await? else {
            return Ok(Slot::Empty);
        };
        match ownership::judge(id, &cfg) {
            Verdict::Owned => Ok(Slot::Owned),
            Verdict::HalfMade => {
                if text(cfg.get("lock")).as_deref() == Some("clone") {
                    return Ok(Slot::CloneRunning);
                }
                if self.is_running(&id.pve_node, vmid).await? {
                    // Tags are set before the first start: a running VM without them was changed
                    // by a person.
                    return Err(ProxmoxError::Foreign {
                        vmid,
                        reason: "running with kiln's marker but without its tags: changed by a \
                                 person, not adopted"
                            .into(),
                    });
                }
                Ok(Slot::HalfMade)
            }
            Verdict::Foreign(reason) => Err(ProxmoxError::Foreign { vmid, reason }),
            Verdict::Mismatched(reason) => Err(ProxmoxError::Mismatched { vmid, reason }),
        }
    }

    async fn clone_vm(
        &self,
        spec: &VmSpec,
        template_node: &str,
    ) -> Result<Option<TaskOutcome>, ProxmoxError> {
        let id = &spec.id;
        let mut params = vec![
            ("newid", id.vmid.get().to_string()),
            ("name", id.name.clone()),
            // The marker goes in with the clone itself: a VM left by a crash right after this call
            // still proves it is kiln's half-made VM.
            ("description", spec.description()),
            ("full", "1".into()),
            ("storage", spec.storage.clone()),
        ];
        if template_node != id.pve_node {
            params.push(("target", id.pve_node.clone()));
        }
        if let Some(pool) = &spec.pool {
            params.push(("pool", pool.clone()));
        }
        let _permit = match &self.clones {
            Some(s) => Some(
                s.acquire()
                    .await
                    .map_err(|e| ProxmoxError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let path = format!(
            "{}/clone",
            Self::vm_path(template_node, spec.template.get())
        );
        let policy = self.api.retry;
        let mut n = 0;
        let mut clone_wait = None;
        loop {
            match self.slot(id).await? {
                Slot::Empty => {}
                Slot::CloneRunning => {
                    // Someone's clone (ours, from before a crash) is still copying: wait, never
                    // clone again, for as long as a task may take.
                    let deadline = *clone_wait
                        .get_or_insert_with(|| tokio::time::Instant::now() + self.task_timeout);
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ProxmoxError::TaskTimeout {
                            upid: format!("clone to {}", id.vmid.get()),
                            seconds: self.task_timeout.as_secs(),
                        });
                    }
                    tokio::time::sleep(policy.base_delay(3)).await;
                    continue;
                }
                Slot::HalfMade | Slot::Owned => return Ok(None),
            }
            let result = match self
                .api
                .call(Method::POST, &path, &params, Some(id.vmid.get()))
                .await
            {
                Ok(data) => self.wait(data).await.map(Some),
                Err(e) => Err(e),
            };
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_transient() => {
                    // Another try only within the tries and the step's budget (crate::retry).
                    let Some(wait) = policy.next_delay(n + 1) else {
                        return Err(e);
                    };
                    tracing::warn!(vmid = id.vmid.get(), error = %e, "clone failed or unanswered; observing before any repeat");
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes whatever of the wanted config differs, with the digest just read; converges after lost
    /// replies and concurrent changes by reading again.
    async fn configure(&self, spec: &VmSpec) -> Result<(), ProxmoxError> {
        let id = &spec.id;
        let vmid = id.vmid.get();
        let policy = self.api.retry;
        // Every PUT counts, answered or not: a write that succeeds but leaves a difference (someone
        // changes the VM after each write, or PVE stores a value in another form) must not loop.
        let mut puts = 0;
        let mut last_error = None;
        loop {
            let cfg = self
                .read_config(&id.pve_node, vmid)
                .await?
                .ok_or_else(|| ProxmoxError::NotFound(format!("VM {vmid} vanished")))?;
            match ownership::judge(id, &cfg) {
                Verdict::Owned => {}
                Verdict::HalfMade => {
                    if self.is_running(&id.pve_node, vmid).await? {
                        return Err(ProxmoxError::Foreign {
                            vmid,
                            reason: "running without kiln's tags: changed by a person".into(),
                        });
                    }
                }
                Verdict::Foreign(reason) => return Err(ProxmoxError::Foreign { vmid, reason }),
                Verdict::Mismatched(reason) => {
                    return Err(ProxmoxError::Mismatched { vmid, reason });
                }
            }
            if let Some(lock) = text(cfg.get("lock")) {
                return Err(ProxmoxError::Locked { vmid, lock });
            }
            let mut diff: Vec<(&str, String)> = spec
                .config_params()
                .into_iter()
                .filter(|(k, want)| text(cfg.get(*k)).as_deref() != Some(want.as_str()))
                .collect();
            if diff.is_empty() {
                return Ok(());
            }
            if puts >= policy.attempts {
                let keys: Vec<&str> = diff.iter().map(|(k, _)| *k).collect();
                return Err(last_error.unwrap_or_else(|| {
                    ProxmoxError::Conflict(format!(
                        "VM {vmid}: {} still differ after {puts} config writes: something keeps \
                         changing the VM",
                        keys.join(", ")
                    ))
                }));
            }
            diff.push(("digest", text(cfg.get("digest")).unwrap_or_default()));
            let path = format!("{}/config", Self::vm_path(&id.pve_node, vmid));
            puts += 1;
            match self.api.call(Method::PUT, &path, &diff, Some(vmid)).await {
                Ok(_) => last_error = None,
                Err(e) if e.is_transient() || matches!(e, ProxmoxError::Conflict(_)) => {
                    tracing::warn!(vmid, error = %e, "config write unconfirmed or raced; reading back");
                    tokio::time::sleep(policy.base_delay(puts - 1)).await;
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Grows the boot disk to `want_gib`, never shrinking it. qemu-server's `resize_vm` checks the
    /// digest, the `lock` and the size inside its worker, under the config lock it takes
    /// (`lock_config`, 10 s), so a change made between kiln's read and the resize — or a config lock
    /// held that long by someone else — fails the *task*, not the HTTP call. Either way the VM is read
    /// again and the size judged afresh before the next try: a resize that ran although its answer
    /// was lost is seen done and never sent twice, and the digest always comes from the latest read.
    async fn grow_disk(
        &self,
        id: &VmIdentity,
        node: &str,
        want_gib: u32,
    ) -> Result<bool, ProxmoxError> {
        let vmid = id.vmid.get();
        let want = u64::from(want_gib) << 30;
        let policy = self.api.retry;
        let path = format!("{}/resize", Self::vm_path(node, vmid));
        // Whether the disk was smaller when first read: a try whose answer was lost may have grown it.
        let mut smaller_at_first = None;
        let mut failures = 0;
        loop {
            let (_owned, cfg) = self.reverify(id, node).await?;
            let drive = text(cfg.get(BOOT_DISK))
                .ok_or_else(|| ProxmoxError::Protocol(format!("VM {vmid} has no {BOOT_DISK}")))?;
            let have = drive_size_bytes(&drive).unwrap_or(0);
            let was_smaller = *smaller_at_first.get_or_insert(have < want);
            if have > want {
                return Err(ProxmoxError::ShrinkRefused {
                    vmid,
                    disk: BOOT_DISK.into(),
                    have,
                    want,
                });
            }
            if have == want {
                return Ok(was_smaller);
            }
            let params = [
                ("disk", BOOT_DISK.to_owned()),
                ("size", format!("{want_gib}G")),
                ("digest", text(cfg.get("digest")).unwrap_or_default()),
            ];
            let result = match self.api.call(Method::PUT, &path, &params, Some(vmid)).await {
                Ok(data) => self.wait(data).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => return Ok(true),
                // A stale digest (over HTTP or as the task's exit status, `task::judge_exit` types
                // both), a held config lock, a lost answer: read again, within the tries and the
                // step's budget (crate::retry). Anything else is PVE's verdict, returned typed.
                Err(e) if e.is_transient() || matches!(e, ProxmoxError::Conflict(_)) => {
                    failures += 1;
                    let Some(wait) = policy.next_delay(failures) else {
                        return Err(e);
                    };
                    tracing::warn!(vmid, error = %e, "disk resize raced or unanswered; reading again");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn power(
        &self,
        vm: &OwnedVm,
        action: &str,
        want_running: bool,
    ) -> Result<Option<TaskOutcome>, ProxmoxError> {
        let id = vm.identity().clone();
        let node = vm.pve_node().to_owned();
        let vmid = vm.vmid();
        let mut params = Vec::new();
        if action == "shutdown" {
            params.push((
                "timeout",
                self.shutdown_timeout.as_secs().max(1).to_string(),
            ));
        }
        let path = format!("{}/status/{action}", Self::vm_path(&node, vmid));
        let result = self
            .act(Method::POST, &path, &params, vmid, || {
                let id = id.clone();
                let node = node.clone();
                async move {
                    let (owned, _) = self.reverify(&id, &node).await?;
                    Ok(owned.running() == want_running)
                }
            })
            .await;
        match result {
            // Starting a running VM (or stopping a stopped one) is what was wanted.
            Err(
                ProxmoxError::TaskFailed { status, .. }
                | ProxmoxError::Api {
                    message: status, ..
                },
            ) if status.contains("already running") || status.contains("not running") => Ok(None),
            other => other,
        }
    }

    async fn create_inner(
        &self,
        spec: &VmSpec,
        template_node: &str,
    ) -> Result<Created, ProxmoxError> {
        let id = &spec.id;
        let mut warnings = Vec::new();
        let adopted = match self.slot(id).await? {
            Slot::Empty | Slot::CloneRunning => {
                if matches!(self.slot(id).await?, Slot::Empty) {
                    self.check_template(spec, template_node).await?;
                }
                let outcome = self.clone_vm(spec, template_node).await?;
                // No clone task of ours finished: the VM we found is the one an unanswered clone made.
                let adopted = outcome.is_none();
                if !adopted {
                    crate::testhook::reached("vm-cloned");
                }
                warnings.extend(outcome.filter(|o| *o != TaskOutcome::Ok));
                adopted
            }
            Slot::HalfMade => true,
            Slot::Owned => false,
        };
        if adopted {
            tracing::info!("adopting a half-made VM (clone done, configuration not)");
        }
        self.configure(spec).await?;
        self.grow_disk(id, &id.pve_node, spec.resources.disk_gib)
            .await?;
        let (owned, _) = self.reverify(id, &id.pve_node).await?;
        let started = self.power(&owned, "start", true).await?;
        crate::testhook::reached("vm-started");
        warnings.extend(started.filter(|o| *o != TaskOutcome::Ok));
        let (vm, _) = self.reverify(id, &id.pve_node).await?;
        Ok(Created {
            vm,
            adopted,
            warnings,
        })
    }
}

#[async_trait]
impl ProxmoxPort for PveAdapter {
    async fn observe(&self) -> Result<Inventory, ProxmoxError> {
        let kept = self.first_listing.lock().expect("listing lock").take();
        // The preflight's listing serves the first cycle while it is no older than PVE's own status
        // dump would be (~10 s, DESIGN.md §3), so a start costs one listing, not two.
        let body = match kept {
            Some((at, body)) if at.elapsed() < LISTING_REUSE => body,
            _ => self.listing().await?,
        };
        Inventory::from_listing_json(&body)
    }

    async fn check_template(&self, spec: &VmSpec, template_node: &str) -> Result<(), ProxmoxError> {
        let t = spec.template.get();
        let cfg = self.read_config(template_node, t).await?.ok_or_else(|| {
            ProxmoxError::Config(format!("template {t} not found on {template_node}"))
        })?;
        if text(cfg.get("template")).as_deref() != Some("1") {
            return Err(ProxmoxError::Config(format!("VM {t} is not a template")));
        }
        if !cfg
            .values()
            .any(|v| v.as_str().is_some_and(|s| s.contains("cloudinit")))
        {
            return Err(ProxmoxError::Config(format!(
                "template {t} has no cloud-init drive: kiln's network settings would never reach the VM"
            )));
        }
        if template_node != spec.id.pve_node {
            self.check_shared(spec, template_node, &cfg).await?;
        }
        Ok(())
    }

    async fn claim(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        Ok(self.reverify(id, &id.pve_node).await?.0)
    }

    async fn claim_for_destroy(&self, id: &VmIdentity) -> Result<OwnedVm, ProxmoxError> {
        let vmid = id.vmid.get();
        let cfg = self
            .read_config(&id.pve_node, vmid)
            .await?
            .ok_or_else(|| ProxmoxError::NotFound(format!("VM {vmid} on {}", id.pve_node)))?;
        let running = self.is_running(&id.pve_node, vmid).await?;
        OwnedVm::verify_for_destroy(id, &id.pve_node, &cfg, running)
    }

    async fn pending(&self, vm: &OwnedVm) -> Result<PendingChanges, ProxmoxError> {
        let data = self
            .api
            .get(
                &format!("{}/pending", Self::vm_path(vm.pve_node(), vm.vmid())),
                &[],
            )
            .await?;
        let mut out = PendingChanges::default();
        for e in data.as_array().into_iter().flatten() {
            let Some(key) = e.get("key").and_then(Value::as_str) else {
                continue;
            };
            if e.get("delete")
                .is_some_and(|d| text(Some(d)).as_deref() == Some("1"))
            {
                out.keys.insert(key.to_owned(), None);
            } else if let Some(p) = text(e.get("pending"))
                && text(e.get("value")).as_deref() != Some(p.as_str())
            {
                out.keys.insert(key.to_owned(), Some(p));
            }
        }
        Ok(out)
    }

    async fn create(&self, spec: &VmSpec, template_node: &str) -> Result<Created, ProxmoxError> {
        let id = &spec.id;
        let span = tracing::info_span!("proxmox_create", cluster = %id.cluster, vm = %id.name, vmid = id.vmid.get());
        self.create_inner(spec, template_node)
            .instrument(span)
            .await
    }

    async fn resize(&self, vm: &OwnedVm, spec: &VmSpec) -> Result<Resized, ProxmoxError> {
        let span = tracing::info_span!("proxmox_resize", cluster = %vm.identity().cluster, vmid = vm.vmid());
        async move {
            let id = vm.identity();
            let node = vm.pve_node();
            let vmid = vm.vmid();
            let policy = self.api.retry;
            let mut n = 0;
            // A concurrent change between the read and the PUT fails on the digest: read again and
            // write what still differs, a bounded number of times.
            loop {
            let (owned, cfg) = self.reverify(id, node).await?;
            let pending = self.pending(&owned).await?;
            let want = [
                ("cores", spec.resources.cores.to_string()),
                ("memory", spec.memory_mib().to_string()),
            ];
            // What the next start will run with: the pending value, else the current one.
            let next = |k: &str| {
                pending
                    .keys
                    .get(k)
                    .cloned()
                    .flatten()
                    .or_else(|| text(cfg.get(k)))
            };
            let writes: Vec<(&str, String)> = want
                .iter()
                .filter(|(k, v)| next(k).as_deref() != Some(v.as_str()))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            if writes.is_empty() {
                break;
            }
            let mut params = writes;
            params.push(("digest", owned.digest().to_owned()));
            match self
                .api
                .call(
                    Method::PUT,
                    &format!("{}/config", Self::vm_path(node, vmid)),
                    &params,
                    Some(vmid),
                )
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_transient() || matches!(e, ProxmoxError::Conflict(_)) => {
                    // Another try only within the tries and the step's budget (crate::retry).
                    let Some(wait) = policy.next_delay(n + 1) else {
                        return Err(e);
                    };
                    tracing::warn!(vmid, error = %e, "size write raced or unanswered; reading again");
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
            }
            let disk_grown = self.grow_disk(id, node, spec.resources.disk_gib).await?;
            let (vm, _) = self.reverify(id, node).await?;
            let pending = self.pending(&vm).await?;
            let needs_reboot = vm.running()
                && (pending.keys.contains_key("cores") || pending.keys.contains_key("memory"));
            Ok(Resized {
                vm,
                needs_reboot,
                disk_grown,
            })
        }
        .instrument(span)
        .await
    }

    async fn reboot(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let span = tracing::info_span!("proxmox_reboot", cluster = %vm.identity().cluster, vmid = vm.vmid());
        async move {
            let id = vm.identity().clone();
            let node = vm.pve_node().to_owned();
            let vmid = vm.vmid();
            let path = format!("{}/status/reboot", Self::vm_path(&node, vmid));
            let params = [(
                "timeout",
                self.shutdown_timeout.as_secs().max(1).to_string(),
            )];
            // Done once the VM runs with nothing pending: that is what the reboot is for, and it makes
            // a reboot whose reply was lost safe to judge.
            self.act(Method::POST, &path, &params, vmid, || {
                let id = id.clone();
                let node = node.clone();
                async move {
                    let (owned, _) = self.reverify(&id, &node).await?;
                    let pending = self.pending(&owned).await?;
                    Ok(owned.running() && pending.is_empty())
                }
            })
            .await?;
            Ok(self.reverify(&id, &node).await?.0)
        }
        .instrument(span)
        .await
    }

    async fn start(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let span = tracing::info_span!("proxmox_start", cluster = %vm.identity().cluster, vmid = vm.vmid());
        async move {
            self.power(vm, "start", true).await?;
            Ok(self.reverify(vm.identity(), vm.pve_node()).await?.0)
        }
        .instrument(span)
        .await
    }

    async fn shutdown(&self, vm: &OwnedVm) -> Result<OwnedVm, ProxmoxError> {
        let span = tracing::info_span!("proxmox_shutdown", cluster = %vm.identity().cluster, vmid = vm.vmid());
        async move {
            match self.power(vm, "shutdown", false).await {
                Ok(_) => {}
                // A guest that ignores ACPI: the shutdown task fails at its timeout; stop it hard.
                Err(ProxmoxError::TaskFailed { .. } | ProxmoxError::TaskTimeout { .. }) => {}
                Err(e) => return Err(e),
            }
            let (owned, _) = self.reverify(vm.identity(), vm.pve_node()).await?;
            if owned.running() {
                tracing::warn!(vmid = owned.vmid(), "graceful shutdown timed out; stopping");
                self.power(&owned, "stop", false).await?;
            }
            Ok(self.reverify(vm.identity(), vm.pve_node()).await?.0)
        }
        .instrument(span)
        .await
    }

    async fn destroy(&self, vm: OwnedVm) -> Result<(), ProxmoxError> {
        let span = tracing::info_span!("proxmox_destroy", cluster = %vm.identity().cluster, vmid = vm.vmid());
        async move {
            // A half-made VM is stopped by proof (and its shutdown would re-verify it as complete).
            let vm = if vm.running() {
                self.shutdown(&vm).await?
            } else {
                vm
            };
            let id = vm.identity().clone();
            let node = vm.pve_node().to_owned();
            let vmid = vm.vmid();
            let path = Self::vm_path(&node, vmid);
            let params = [
                ("purge", "1".to_owned()),
                ("destroy-unreferenced-disks", "1".to_owned()),
            ];
            self.act(Method::DELETE, &path, &params, vmid, || {
                let id = id.clone();
                let node = node.clone();
                async move {
                    match self.read_config(&node, vmid).await? {
                        None => Ok(true),
                        Some(cfg) => {
                            // Still there: it must still be ours, and stopped, before the
                            // (repeated) delete.
                            let running = self.is_running(&node, vmid).await?;
                            OwnedVm::verify_for_destroy(&id, &node, &cfg, running)?;
                            if running {
                                return Err(ProxmoxError::Protocol(format!(
                                    "VM {vmid} runs again; not destroyed"
                                )));
                            }
                            Ok(false)
                        }
                    }
                }
            })
            .await?;
            // A VM leaves kiln's records only once Proxmox confirms it is gone.
            match self.read_config(&node, vmid).await? {
                None => Ok(()),
                Some(_) => Err(ProxmoxError::Protocol(format!(
                    "VM {vmid} still exists after its destroy task"
                ))),
            }
        }
        .instrument(span)
        .await
    }
}
