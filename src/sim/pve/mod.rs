//! An in-memory Proxmox VE behind the PVE API transport ([`crate::proxmox::Transport`]): the real
//! `proxmox` adapter (`PveAdapter` over `Api::over`) drives it exactly as it drives a server, so
//! `kiln demo` and the engine tests run the adapter's clone → adopt → configure → grow → start,
//! its ownership proofs, digests, task waits and error classification.
//!
//! Each endpoint copies PVE's behaviour from its sources (cited per handler: qemu-server
//! `src/PVE/API2/Qemu.pm`, pve-manager `PVE/API2/Cluster.pm`, pve-access-control, pve-storage,
//! pve-guest-common); `docs/upstream-proxmox.md` lists them. Tasks end before their UPID is
//! returned, so nothing waits in real time.
//!
//! Tests act as the person at the web UI through [`SimPve::edit`], [`SimPve::stop_by_hand`],
//! [`SimPve::add_vm`] and look with [`SimPve::vm`] and [`SimPve::requests`]. What runs inside a VM
//! is not this module's business: every power change is reported to an optional [`PowerHook`]
//! (`sim::lab` boots and stops Talos nodes), outside the simulator's lock and before the call that
//! caused it is answered.

mod clone;
mod cluster;
mod qemu;
#[cfg(test)]
mod resize_tests;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use http::Method;
use serde_json::{Value, json};

use crate::proxmox::{Reply, Transport, TransportError};
use qemu::Params;
pub use state::{ALL_PRIVILEGES, SeenRequest, SimStorage, SimTask, SimVm};
use state::{Refusal, State};

/// A change of a VM's power, as the guest inside it would feel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerChange {
    /// Powered on from off (the first boot after a clone, or a start).
    Started,
    /// Restarted while running (a reboot: off, then on, pending changes applied).
    Rebooted,
    /// Powered off (a shutdown, a stop, or a person at the web UI).
    Stopped,
    /// Gone for good (destroyed with its disks; it was stopped first).
    Destroyed,
}

/// One power change and the VM's configuration at that moment (after the change; for `Destroyed`, the
/// last one it had), so a hook needs no second look at the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerEvent {
    pub vmid: u32,
    pub node: String,
    pub change: PowerChange,
    pub config: BTreeMap<String, String>,
}

/// Called after each power change, outside the simulator's lock, before the API call returns: when
/// the adapter's `create` or `start` returns, whatever the hook started is up.
pub type PowerHook = Arc<dyn Fn(&PowerEvent) + Send + Sync>;

#[derive(Default)]
struct HookSlot(RwLock<Option<PowerHook>>);

/// What an injected fault does to the next matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// PVE answers this instead of running the request (e.g. 500 "can't lock file … - got timeout").
    Refuse { status: u16, message: String },
    /// The request runs to its end, then the answer is lost on the way back.
    LoseReply,
    /// No connection: the request never reaches PVE.
    NotSent,
    /// PVE accepts the request and answers its UPID, and the worker dies with this message before
    /// doing any work: what a check inside the worker does (pve-common `src/PVE/RESTEnvironment.pm`
    /// `fork_worker`), e.g. qemu-server's `lock_config` timing out on a config lock held by another
    /// task ("can't lock file '/var/lock/qemu-server/lock-701.conf' - got timeout").
    FailTask(String),
}

/// A fault for the next `times` requests whose method matches and whose path ends with `path_suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub method: Method,
    pub path_suffix: String,
    pub kind: FaultKind,
    pub times: u32,
}

/// The simulated PVE cluster. Cheap to create; all state in memory.
pub struct SimPve {
    state: Mutex<State>,
    hook: HookSlot,
    faults: Mutex<Vec<Fault>>,
}

impl std::fmt::Debug for SimPve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPve")
            .field("vms", &self.lock().vms.len())
            .finish_non_exhaustive()
    }
}

impl Default for SimPve {
    fn default() -> Self {
        Self::new()
    }
}

impl SimPve {
    /// A fresh cluster: storages `local` and `local-lvm` (node-local), no VMs, and a token holding
    /// every privilege on `/`.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::new()),
            hook: HookSlot::default(),
            faults: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulated PVE lock")
    }

    /// Installs the hook told of every power change from now on (replacing any earlier one).
    pub fn set_power_hook(&self, hook: PowerHook) {
        *self.hook.0.write().expect("hook lock") = Some(hook);
    }

    fn emit(&self, events: &[PowerEvent]) {
        let Some(hook) = self.hook.0.read().expect("hook lock").clone() else {
            return;
        };
        for e in events {
            hook(e);
        }
    }

    /// A Talos nocloud template, as an operator prepares one (`qm template`: `template: 1`, base
    /// volumes), with a cloud-init drive on `local-lvm`.
    pub fn add_template(&self, vmid: u32, node: &str) {
        let config = [
            ("name", format!("talos-template-{vmid}")),
            ("template", "1".into()),
            ("cores", "2".into()),
            ("memory", "2048".into()),
            ("ostype", "l26".into()),
            ("scsi0", format!("local-lvm:base-{vmid}-disk-0,size=10G")),
            ("ide2", format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom")),
        ];
        let config = config.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mut st = self.lock();
        st.nodes.insert(node.to_owned());
        st.vms.insert(vmid, SimVm::new(node, config, false));
    }

    /// A VM kiln did not make (or a half-made one a crash left behind).
    pub fn add_vm(&self, vmid: u32, node: &str, config: BTreeMap<String, String>, running: bool) {
        let event = {
            let mut st = self.lock();
            st.nodes.insert(node.to_owned());
            let vm = SimVm::new(node, config, running);
            let event = running.then(|| PowerEvent {
                vmid,
                node: node.to_owned(),
                change: PowerChange::Started,
                config: vm.config.clone(),
            });
            st.vms.insert(vmid, vm);
            event
        };
        self.emit(&event.into_iter().collect::<Vec<_>>());
    }

    /// A cluster node with nothing on it yet (a clone `target`).
    pub fn add_node(&self, node: &str) {
        self.lock().nodes.insert(node.to_owned());
    }

    /// A storage in storage.cfg (`shared` as on Ceph or NFS), holding VM images.
    pub fn add_storage(&self, id: &str, kind: &str, shared: bool) {
        self.lock().storages.insert(
            id.to_owned(),
            SimStorage {
                kind: kind.to_owned(),
                shared,
                images: true,
            },
        );
    }

    pub fn add_pool(&self, pool: &str) {
        self.lock().pools.insert(pool.to_owned());
    }

    /// Sets the token's privileges on `path` (replacing what it inherited there, as a more specific
    /// ACL entry does in PVE).
    pub fn set_privileges(&self, path: &str, privileges: &[&str]) {
        self.lock().acl.insert(
            path.to_owned(),
            privileges.iter().map(|p| (*p).to_owned()).collect(),
        );
    }

    /// Takes one privilege away on `path`, keeping the rest of what the token held there.
    pub fn revoke(&self, path: &str, privilege: &str) {
        let mut st = self.lock();
        let mut held = st.held(path);
        held.remove(privilege);
        st.acl.insert(path.to_owned(), held);
    }

    pub fn vm(&self, vmid: u32) -> Option<SimVm> {
        self.lock().vms.get(&vmid).cloned()
    }

    /// A person edits the VM in the web UI and the change applies (`None` deletes a key): the
    /// digest moves, as any write of the config file moves it.
    pub fn edit(&self, vmid: u32, changes: &[(&str, Option<&str>)]) {
        let mut st = self.lock();
        if let Some(vm) = st.vms.get_mut(&vmid) {
            for (k, v) in changes {
                match v {
                    Some(v) => vm.config.insert((*k).to_owned(), (*v).to_owned()),
                    None => vm.config.remove(*k),
                };
            }
        }
    }

    /// A person presses Stop in the web UI: a hard stop, which applies pending changes as every stop
    /// does (qemu-server `src/PVE/QemuServer.pm` `vm_stop_cleanup`).
    pub fn stop_by_hand(&self, vmid: u32) {
        let event = {
            let mut st = self.lock();
            match st.vms.get_mut(&vmid) {
                Some(vm) if vm.running => {
                    vm.running = false;
                    vm.apply_pending();
                    Some(PowerEvent {
                        vmid,
                        node: vm.node.clone(),
                        change: PowerChange::Stopped,
                        config: vm.config.clone(),
                    })
                }
                _ => None,
            }
        };
        self.emit(&event.into_iter().collect::<Vec<_>>());
    }

    /// Makes the next matching requests fail (the network or PVE misbehaving), for tests of the
    /// adapter's retries and of its looking before repeating a write.
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().expect("faults lock").push(fault);
    }

    /// Injected faults not used up yet.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.faults.lock().expect("faults lock").clone()
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<FaultKind> {
        let mut faults = self.faults.lock().expect("faults lock");
        let i = faults
            .iter()
            .position(|f| f.method == method && path.ends_with(&f.path_suffix) && f.times > 0)?;
        faults[i].times -= 1;
        let kind = faults[i].kind.clone();
        if faults[i].times == 0 {
            faults.remove(i);
        }
        Some(kind)
    }

    /// `GET /cluster/resources` served.
    pub fn listings(&self) -> u64 {
        self.lock().listings
    }

    /// Modifying requests received (every POST, PUT and DELETE), answered or refused: zero new ones
    /// means nothing the adapter sent could have changed a VM.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// The requests received, oldest first (the last few thousand).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Answers one API call: the routing of pve-http-server over the handlers of this module.
    fn serve(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<(Value, Vec<PowerEvent>), Refusal> {
        let mut st = self.lock();
        st.record(method.as_str(), path, params);
        if method != Method::GET {
            st.writes += 1;
        }
        let params: Params = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let plain = |v: Value| Ok((v, Vec::new()));
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["cluster", "resources"]) => plain(cluster::resources(&mut st, &params)),
            ("GET", ["cluster", "options"]) => plain(cluster::options(&st)),
            ("GET", ["storage"]) => plain(cluster::storages(&st)),
            ("GET", ["access", "permissions"]) => plain(cluster::permissions(&st, &params)),
            ("GET", ["nodes", node, "tasks", upid, what @ ("status" | "log")]) => {
                cluster::task(&st, node, upid, what, &params).map(|v| (v, Vec::new()))
            }
            (_, ["nodes", node, "qemu", vmid, rest @ ..]) => {
                let vmid: u32 = vmid
                    .parse()
                    .map_err(|_| Refusal::param("vmid", "type check ('integer') failed"))?;
                let answer = qemu::route(&mut st, method, node, vmid, rest, &params)?;
                Ok((answer.data, answer.events))
            }
            _ => Err(Refusal {
                status: 501,
                message: format!("Method '{method} {path}' not implemented"),
                errors: BTreeMap::new(),
            }),
        }
    }
}

#[async_trait]
impl Transport for SimPve {
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Reply, TransportError> {
        let fault = self.take_fault(method, path);
        let served = match &fault {
            Some(FaultKind::NotSent) => {
                return Err(TransportError::NotSent(format!(
                    "{method} {path}: connection refused (injected)"
                )));
            }
            Some(FaultKind::Refuse { status, message }) => {
                // PVE received it, and refused it without running it.
                let mut st = self.lock();
                st.record(method.as_str(), path, params);
                if method != Method::GET {
                    st.writes += 1;
                }
                Err(Refusal {
                    status: *status,
                    message: message.clone(),
                    errors: BTreeMap::new(),
                })
            }
            Some(FaultKind::FailTask(message)) => {
                let mut st = self.lock();
                st.record(method.as_str(), path, params);
                if method != Method::GET {
                    st.writes += 1;
                }
                let (node, kind, id) = task_of(method, path);
                let message = message.clone();
                let upid = st.task(&node, &kind, &id, |_| Err(message));
                Ok((Value::String(upid), Vec::new()))
            }
            Some(FaultKind::LoseReply) | None => self.serve(method, path, params),
        };
        let (status, reason, body) = match served {
            Ok((data, events)) => {
                self.emit(&events);
                if fault == Some(FaultKind::LoseReply) {
                    return Err(TransportError::NoAnswer(format!(
                        "{method} {path}: connection reset after the request ran (injected)"
                    )));
                }
                (200, Some("OK".to_owned()), json!({ "data": data }))
            }
            Err(r) => {
                let mut body = json!({ "data": null });
                if !r.errors.is_empty() {
                    body["errors"] = json!(r.errors);
                }
                (r.status, Some(r.message), body)
            }
        };
        Ok(Reply {
            status,
            reason,
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
        })
    }

    fn describe(&self) -> String {
        "simulated PVE (in memory)".into()
    }
}

/// Node, task type and id of the task a request's worker would run (`/nodes/{node}/qemu/{vmid}/…`),
/// named as qemu-server names them (`qmclone`, `qmstart`, `resize`, …).
fn task_of(method: &Method, path: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let node = match parts.as_slice() {
        ["nodes", node, ..] => (*node).to_owned(),
        _ => "pve1".to_owned(),
    };
    let id = match parts.as_slice() {
        ["nodes", _, "qemu", vmid, ..] => (*vmid).to_owned(),
        _ => String::new(),
    };
    let kind = match (method.as_str(), parts.last().copied().unwrap_or("")) {
        ("DELETE", _) => "qmdestroy".to_owned(),
        (_, "clone") => "qmclone".to_owned(),
        (_, action @ ("start" | "stop" | "shutdown" | "reboot")) => format!("qm{action}"),
        (_, "config") => "qmconfig".to_owned(),
        (_, other) => other.to_owned(),
    };
    (node, kind, id)
}

/// The real adapter over this simulator: what `proxmox.backend = "simulated"` and the lab hand the
/// reconciler. Task and shutdown timeouts are PVE's defaults; the retry policy is the adapter's own.
pub fn adapter(pve: Arc<SimPve>) -> crate::proxmox::PveAdapter {
    adapter_with_retry(pve, crate::proxmox::DEFAULT_RETRY)
}

/// As [`adapter`], with a retry policy of the test's (short pauses for injected faults).
pub fn adapter_with_retry(
    pve: Arc<SimPve>,
    retry: crate::proxmox::RetryPolicy,
) -> crate::proxmox::PveAdapter {
    crate::proxmox::PveAdapter::new(
        crate::proxmox::Api::over(pve).with_retry(retry),
        std::time::Duration::from_secs(600),
        std::time::Duration::from_secs(60),
        0,
    )
}
