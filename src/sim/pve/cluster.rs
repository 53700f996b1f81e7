//! The cluster-wide endpoints the adapter and its preflight call: the VM listing, datacenter options,
//! storages, the token's permissions, and task status and logs.

use serde_json::{Map, Value, json};

use super::qemu::Params;
use super::state::{Refusal, State, drive_bytes};

/// `GET /cluster/resources?type=vm` (pve-manager `PVE/API2/Cluster.pm` `resources`): one entry per
/// guest the token may audit (`VM.Audit` on `/vms/<vmid>`, others are skipped), `lock` and `tags`
/// from the current config section. PVE takes sizes and status from pvestatd's last round (up to
/// ~10 s old); the simulator answers with the state as it is now.
pub fn resources(st: &mut State, params: &Params) -> Value {
    st.listings += 1;
    if params.get("type").is_some_and(|t| t != "vm") {
        return Value::Array(Vec::new());
    }
    let data: Vec<Value> = st
        .vms
        .iter()
        .filter(|(vmid, _)| st.held(&format!("/vms/{vmid}")).contains("VM.Audit"))
        .map(|(vmid, vm)| {
            let c = |k: &str| vm.config.get(k).cloned();
            let mut e = json!({
                "id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid, "node": vm.node,
                "name": c("name").unwrap_or_default(),
                "status": if vm.running { "running" } else { "stopped" },
                "template": u8::from(vm.is_template()),
                "maxcpu": c("cores").and_then(|v| v.parse::<u64>().ok()).unwrap_or(1),
                "maxmem": c("memory").and_then(|v| v.parse::<u64>().ok()).unwrap_or(512) << 20,
                "maxdisk": c("scsi0").and_then(|d| drive_bytes(&d)).unwrap_or(0),
                "uptime": 0,
            });
            for k in ["tags", "lock"] {
                if let Some(v) = c(k) {
                    e[k] = Value::String(v);
                }
            }
            if let Some(pool) = &vm.pool {
                e["pool"] = Value::String(pool.clone());
            }
            e
        })
        .collect();
    Value::Array(data)
}

/// `GET /cluster/options` (pve-manager `PVE/API2/Cluster.pm` `get_options`): a fresh datacenter.cfg
/// is empty (no `user-tag-access`, no `registered-tags`); without `Sys.Audit` on `/` only `console`
/// and `tag-style` would be shown, and `allowed-tags` is always added.
pub fn options(_st: &State) -> Value {
    // Empty either way: the Sys.Audit filter has nothing to hide in an empty datacenter.cfg.
    json!({ "allowed-tags": [] })
}

/// `GET /storage` (pve-storage `src/PVE/API2/Storage/Config.pm` `index`): the storages the token
/// holds `Datastore.Audit` or `Datastore.AllocateSpace` on.
pub fn storages(st: &State) -> Value {
    let list: Vec<Value> = st
        .storages
        .iter()
        .filter(|(id, _)| {
            let held = st.held(&format!("/storage/{id}"));
            held.contains("Datastore.Audit") || held.contains("Datastore.AllocateSpace")
        })
        .map(|(id, s)| {
            json!({
                "storage": id,
                "type": s.kind,
                "shared": u8::from(s.shared),
                "content": if s.images { "images,rootdir" } else { "iso,vztmpl" },
                "digest": "0",
            })
        })
        .collect();
    Value::Array(list)
}

/// `GET /access/permissions` (pve-access-control `src/PVE/API2/AccessControl.pm` `permissions`):
/// for `path`, one entry `{path: {privilege: propagate}}` resolved by PVE; without it, every path
/// of the ACL tree.
pub fn permissions(st: &State, params: &Params) -> Value {
    let entry = |path: &str| {
        let privs: Map<String, Value> = st
            .held(path)
            .into_iter()
            .map(|p| (p, Value::from(1)))
            .collect();
        Value::Object(privs)
    };
    let mut res = Map::new();
    match params.get("path") {
        Some(path) => {
            res.insert(path.clone(), entry(path));
        }
        None => {
            for path in st.acl.keys() {
                res.insert(path.clone(), entry(path));
            }
        }
    }
    Value::Object(res)
}

/// `GET /nodes/{node}/tasks/{upid}/status` and `…/log` (pve-manager `PVE/API2/Tasks.pm`
/// `read_task_status`, `read_task_log`). Every simulated task has ended by the time its UPID is
/// handed out.
pub fn task(
    st: &State,
    node: &str,
    upid: &str,
    what: &str,
    params: &Params,
) -> Result<Value, Refusal> {
    let task = st
        .tasks
        .get(upid)
        .filter(|t| t.node == node)
        .ok_or_else(|| Refusal::die(format!("no such task '{upid}'")))?;
    match what {
        "status" => Ok(json!({
            "upid": upid, "node": task.node, "pid": task.pid, "pstart": 0x00AB_CDEF_u32,
            "starttime": task.starttime, "type": task.kind, "id": task.id, "user": "kiln@pve",
            "tokenid": "sim", "status": "stopped", "exitstatus": task.exitstatus,
        })),
        _ => {
            let start: usize = params
                .get("start")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let limit: usize = params
                .get("limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(50);
            let lines: Vec<Value> = task
                .log
                .iter()
                .enumerate()
                .skip(start)
                .take(limit)
                .map(|(i, t)| json!({ "n": i + 1, "t": t }))
                .collect();
            Ok(Value::Array(lines))
        }
    }
}
