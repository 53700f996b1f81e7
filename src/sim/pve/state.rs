//! What the in-memory PVE keeps: VM configuration files as qemu-server writes them (a current section,
//! a `[PENDING]` section and pending deletes, a digest over the whole file), storages, pools, the
//! token's ACL, and finished tasks. Each rule names the upstream file it copies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{Map, Value, json};

/// A refusal as PVE's HTTP server sends it: the status, and the message (the reason phrase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// Per-parameter problems (`raise_param_exc`), sent as the body's `errors`.
    pub errors: BTreeMap<String, String>,
}

impl Refusal {
    /// A `die` in an API handler: HTTP 500 with the message (pve-http-server `APIServer/AnyEvent.pm`).
    pub fn die(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    /// `raise_perm_exc`: 403 "Permission check failed (path, privilege)" (pve-access-control
    /// `src/PVE/RPCEnvironment.pm` `check`).
    pub fn permission(path: &str, privilege: &str) -> Self {
        Self {
            status: 403,
            message: format!("Permission check failed ({path}, {privilege})"),
            errors: BTreeMap::new(),
        }
    }

    /// `raise_param_exc`: 400 "Parameter verification failed." with the reasons per parameter
    /// (pve-common `src/PVE/Exception.pm`).
    pub fn param(name: &str, why: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors: [(name.to_owned(), why.into())].into(),
        }
    }
}

/// Options a running VM takes at once; the rest waits in `[PENDING]` for the next start, since
/// qemu-server's default `hotplug` (`network,disk,usb`) plugs no CPU or memory. qemu-server
/// `src/PVE/QemuServer.pm` `$fast_plug_option` and the cloud-init options added to it.
/// (NIC and disk hotplug is not simulated: such changes wait for the next start too.)
const FAST_PLUG: [&str; 12] = [
    "description",
    "hookscript",
    "lock",
    "migrate_downtime",
    "migrate_speed",
    "name",
    "onboot",
    "protection",
    "shares",
    "startup",
    "tags",
    "vmstatestorage",
];

fn is_cloudinit_option(key: &str) -> bool {
    matches!(
        key,
        "cicustom"
            | "cipassword"
            | "citype"
            | "ciuser"
            | "ciupgrade"
            | "nameserver"
            | "searchdomain"
            | "sshkeys"
    ) || key
        .strip_prefix("ipconfig")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Integer and boolean options come back as JSON numbers (PVE's JSON schema types them), property
/// strings as strings — so the adapter reads both forms, as it must against a real server.
const NUMERIC: [&str; 7] = [
    "cores",
    "sockets",
    "vcpus",
    "template",
    "onboot",
    "balloon",
    "protection",
];

/// One VM as its configuration file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVm {
    pub node: String,
    pub config: BTreeMap<String, String>,
    /// `[PENDING]`: values the next start (or stop) applies.
    pub pending: BTreeMap<String, String>,
    /// Keys the next start deletes (`delete:` in `[PENDING]`).
    pub pending_delete: BTreeSet<String>,
    pub running: bool,
    /// The pool the VM belongs to (user.cfg, not the VM config).
    pub pool: Option<String>,
}

impl SimVm {
    pub fn new(node: &str, config: BTreeMap<String, String>, running: bool) -> Self {
        Self {
            node: node.to_owned(),
            config,
            pending: BTreeMap::new(),
            pending_delete: BTreeSet::new(),
            running,
            pool: None,
        }
    }

    pub fn is_template(&self) -> bool {
        self.config.get("template").map(String::as_str) == Some("1")
    }

    /// The file as `write_config` would lay it out; the digest is taken over it, as PVE's is over
    /// the file it read (pve-cluster `PVE/Cluster.pm` `parse_*_config`: `digest => sha1(raw)`). PVE
    /// uses SHA-1; this uses the first 20 bytes of SHA-256: same length, still content-derived.
    pub(crate) fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut raw = String::new();
        for (k, v) in &self.config {
            raw.push_str(&format!("{k}: {v}\n"));
        }
        if !self.pending.is_empty() || !self.pending_delete.is_empty() {
            raw.push_str("\n[PENDING]\n");
            if !self.pending_delete.is_empty() {
                let keys: Vec<&str> = self.pending_delete.iter().map(String::as_str).collect();
                raw.push_str(&format!("delete: {}\n", keys.join(",")));
            }
            for (k, v) in &self.pending {
                raw.push_str(&format!("{k}: {v}\n"));
            }
        }
        hex::encode(&Sha256::digest(raw.as_bytes())[..20])
    }

    /// `GET …/config`: with pending values applied unless `current` (qemu-server
    /// `src/PVE/QemuConfig.pm` `load_current_config`), with the digest.
    pub(crate) fn config_json(&self, current: bool) -> Map<String, Value> {
        let mut view = self.config.clone();
        if !current {
            for k in &self.pending_delete {
                view.remove(k);
            }
            view.extend(self.pending.clone());
        }
        let mut m: Map<String, Value> = view
            .into_iter()
            .map(|(k, v)| {
                let value = match v.parse::<i64>() {
                    Ok(n) if NUMERIC.contains(&k.as_str()) => Value::from(n),
                    _ => Value::String(v),
                };
                (k, value)
            })
            .collect();
        m.insert("digest".into(), Value::String(self.digest()));
        m
    }

    /// `GET …/pending`: every key with its current and pending value, pending deletes flagged
    /// (pve-guest-common `src/PVE/GuestHelpers.pm` `config_with_pending_array`).
    pub(crate) fn pending_json(&self) -> Value {
        let keys: BTreeSet<&String> = self
            .config
            .keys()
            .chain(self.pending.keys())
            .chain(self.pending_delete.iter())
            .collect();
        let rows: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                let mut row = json!({ "key": k });
                if let Some(v) = self.config.get(k) {
                    row["value"] = Value::String(v.clone());
                }
                if let Some(p) = self.pending.get(k) {
                    row["pending"] = Value::String(p.clone());
                }
                if self.pending_delete.contains(k) {
                    row["delete"] = Value::from(1);
                }
                row
            })
            .collect();
        Value::Array(rows)
    }

    /// Writes a value into `[PENDING]` (qemu-server `src/PVE/API2/Qemu.pm` `update_vm_api`: every
    /// change goes to pending first).
    pub(crate) fn stage(&mut self, key: &str, value: String) {
        self.pending_delete.remove(key);
        self.pending.insert(key.to_owned(), value);
    }

    pub(crate) fn stage_delete(&mut self, key: &str) {
        self.pending.remove(key);
        if self.config.contains_key(key) {
            self.pending_delete.insert(key.to_owned());
        }
    }

    /// Drops pending values equal to the current ones (pve-guest-common `src/PVE/AbstractConfig.pm`
    /// `cleanup_pending`).
    pub(crate) fn cleanup_pending(&mut self) {
        let config = &self.config;
        self.pending.retain(|k, v| config.get(k) != Some(v));
        self.pending_delete.retain(|k| config.contains_key(k));
    }

    /// Everything pending becomes current: a stopped VM's config write, and every start and stop
    /// (qemu-server `src/PVE/QemuServer.pm` `vmconfig_apply_pending`, called from `vm_start_nolock`
    /// and `vm_stop_cleanup`).
    pub(crate) fn apply_pending(&mut self) {
        for k in std::mem::take(&mut self.pending_delete) {
            self.config.remove(&k);
        }
        let pending = std::mem::take(&mut self.pending);
        self.config.extend(pending);
    }

    /// A running VM takes the fast-plug and cloud-init options at once; the rest stays pending
    /// (qemu-server `src/PVE/QemuServer.pm` `vmconfig_hotplug_pending`).
    pub(crate) fn hotplug_pending(&mut self) {
        let live: Vec<String> = self
            .pending
            .keys()
            .filter(|k| FAST_PLUG.contains(&k.as_str()) || is_cloudinit_option(k))
            .cloned()
            .collect();
        for k in live {
            if let Some(v) = self.pending.remove(&k) {
                self.config.insert(k, v);
            }
        }
        let gone: Vec<String> = self
            .pending_delete
            .iter()
            .filter(|k| FAST_PLUG.contains(&k.as_str()) || is_cloudinit_option(k))
            .cloned()
            .collect();
        for k in gone {
            self.pending_delete.remove(&k);
            self.config.remove(&k);
        }
    }
}

/// One storage of storage.cfg, as `GET /storage` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimStorage {
    pub kind: String,
    pub shared: bool,
    /// Holds VM images (`content images`).
    pub images: bool,
}

/// A finished task: PVE's status and log of a worker (pve-common `src/PVE/RESTEnvironment.pm`
/// `fork_worker`; the exit status is the log's last line, `src/PVE/Tools.pm` `upid_read_status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTask {
    pub node: String,
    pub kind: String,
    pub id: String,
    pub starttime: u64,
    pub pid: u32,
    /// `OK`, `WARNINGS: n`, or the error's message.
    pub exitstatus: String,
    pub log: Vec<String>,
}

/// Every privilege of PVE's built-in roles that kiln's calls are checked against (pve-access-control
/// `src/PVE/AccessControl.pm` `$privgroups`), which the lab's token holds on `/` by default.
pub const ALL_PRIVILEGES: [&str; 27] = [
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Pool.Allocate",
    "Pool.Audit",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Migrate",
    "VM.PowerMgmt",
];

/// How many requests the log keeps: enough for a test to look at one reconcile, bounded so a
/// simulated daemon that runs for days does not grow.
const REQUEST_LOG: usize = 4096;

/// One request as the simulated server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub vms: BTreeMap<u32, SimVm>,
    pub storages: BTreeMap<String, SimStorage>,
    pub pools: BTreeSet<String>,
    /// Cluster nodes that exist (the nodes templates and VMs were placed on, and any added).
    pub nodes: BTreeSet<String>,
    /// path → the privileges the token holds there, propagated to the paths below unless another
    /// entry is closer (pve-access-control `src/PVE/AccessControl.pm` `permission`: the most specific
    /// ACL path wins).
    pub acl: BTreeMap<String, BTreeSet<String>>,
    pub tasks: BTreeMap<String, SimTask>,
    pub next_pid: u32,
    pub listings: u64,
    pub writes: u64,
    pub requests: VecDeque<SeenRequest>,
}

impl State {
    pub fn new() -> Self {
        let storage = |kind: &str, shared| SimStorage {
            kind: kind.into(),
            shared,
            images: true,
        };
        Self {
            // A fresh PVE install: `local` (dir) and `local-lvm` (lvmthin), both node-local.
            storages: [
                ("local".to_owned(), storage("dir", false)),
                ("local-lvm".to_owned(), storage("lvmthin", false)),
            ]
            .into(),
            acl: [(
                "/".to_owned(),
                ALL_PRIVILEGES.iter().map(|p| (*p).to_owned()).collect(),
            )]
            .into(),
            next_pid: 0x1000,
            ..Default::default()
        }
    }

    pub fn record(&mut self, method: &str, path: &str, params: &[(&str, String)]) {
        if self.requests.len() == REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(SeenRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        });
    }

    /// The privileges held on `path`: the closest ACL entry at or above it; for a VM, its pool's
    /// grants count too (pve-access-control `src/PVE/RPCEnvironment.pm` `check_vm_perm` tries
    /// `/pool/<pool>` first).
    pub fn held(&self, path: &str) -> BTreeSet<String> {
        let mut held = self.closest(path);
        if let Some(vmid) = path
            .strip_prefix("/vms/")
            .and_then(|v| v.parse::<u32>().ok())
            && let Some(pool) = self.vms.get(&vmid).and_then(|vm| vm.pool.clone())
        {
            held.extend(self.closest(&format!("/pool/{pool}")));
        }
        held
    }

    fn closest(&self, path: &str) -> BTreeSet<String> {
        let mut p = path.trim_end_matches('/').to_owned();
        loop {
            if let Some(held) = self.acl.get(if p.is_empty() { "/" } else { &p }) {
                return held.clone();
            }
            match p.rfind('/') {
                Some(i) if !p.is_empty() => p.truncate(i),
                _ => return BTreeSet::new(),
            }
        }
    }

    pub fn check(&self, path: &str, privilege: &str) -> Result<(), Refusal> {
        if self.held(path).contains(privilege) {
            Ok(())
        } else {
            Err(Refusal::permission(path, privilege))
        }
    }

    /// `check_vm_perm` with `any`: one of the privileges suffices.
    pub fn check_any(&self, path: &str, privileges: &[&str]) -> Result<(), Refusal> {
        let held = self.held(path);
        if privileges.iter().any(|p| held.contains(*p)) {
            Ok(())
        } else {
            Err(Refusal::permission(path, &privileges.join("|")))
        }
    }

    /// The VM at `vmid` on `node`, or PVE's answer for a config file that is not there
    /// (pve-guest-common `src/PVE/AbstractConfig.pm` `load_config`).
    pub fn vm_on(&self, node: &str, vmid: u32) -> Result<&SimVm, Refusal> {
        self.vms
            .get(&vmid)
            .filter(|vm| vm.node == node)
            .ok_or_else(|| missing_config(node, vmid))
    }

    pub fn vm_on_mut(&mut self, node: &str, vmid: u32) -> Result<&mut SimVm, Refusal> {
        self.vms
            .get_mut(&vmid)
            .filter(|vm| vm.node == node)
            .ok_or_else(|| missing_config(node, vmid))
    }

    /// Runs a worker to its end at once and files its task: the sim's work is instant, so the
    /// adapter's first status poll finds it stopped and no one waits in real time.
    pub fn task(
        &mut self,
        node: &str,
        kind: &str,
        id: &str,
        work: impl FnOnce(&mut Self) -> Result<Vec<String>, String>,
    ) -> String {
        let starttime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.next_pid += 1;
        let pid = self.next_pid;
        // pve-common `src/PVE/Tools.pm` `upid_encode`: node, pid, pstart, starttime, type, id, user.
        let upid = format!(
            "UPID:{node}:{pid:08X}:{:08X}:{starttime:08X}:{kind}:{id}:kiln@pve!sim:",
            0x00AB_CDEF
        );
        let (exitstatus, mut log) = match work(self) {
            Ok(log) => ("OK".to_owned(), log),
            Err(e) => (e.clone(), vec![format!("TASK ERROR: {e}")]),
        };
        if exitstatus == "OK" {
            log.push("TASK OK".into());
        }
        self.tasks.insert(
            upid.clone(),
            SimTask {
                node: node.to_owned(),
                kind: kind.to_owned(),
                id: id.to_owned(),
                starttime,
                pid,
                exitstatus,
                log,
            },
        );
        upid
    }
}

pub fn missing_config(node: &str, vmid: u32) -> Refusal {
    Refusal::die(format!(
        "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
    ))
}

/// `size=` of a drive string in bytes (no unit: bytes, as pve-common `parse_size` reads it).
pub fn drive_bytes(drive: &str) -> Option<u64> {
    let size = drive.split(',').find_map(|p| p.strip_prefix("size="))?;
    parse_size(size)
}

pub fn parse_size(text: &str) -> Option<u64> {
    let (num, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
        _ => (text, None),
    };
    let mult: u64 = match unit {
        None => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    Some((n * mult as f64) as u64)
}

/// Bytes as `print_drive` writes `size=` (pve-common `src/PVE/JSONSchema.pm` `format_size`: the
/// largest unit that divides evenly).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Replaces (or adds) `size=` in a drive string.
pub fn with_size(drive: &str, bytes: u64) -> String {
    let rest: Vec<&str> = drive
        .split(',')
        .filter(|p| !p.starts_with("size="))
        .collect();
    format!("{},size={}", rest.join(","), format_size(bytes))
}
