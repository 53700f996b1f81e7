//! Applying a config to a node that already runs one, as machined does it in Talos ≤ 1.13: whether a
//! change applies without a reboot (`CanApplyImmediate`), the record of every ApplyConfiguration a
//! test reads ("dry run first", the mode used), and a config changed by hand as `talosctl edit mc`
//! leaves it.

use std::net::SocketAddr;

use serde_yaml::{Mapping, Value};

use super::SimTalos;
use super::config::{self, NodeConfig};
use super::fleet::{ADMIN, Fleet, Node, OPERATOR, READER};
use crate::talos::grpc::machine_config::MACHINE_CONFIG;
use crate::talos::grpc::proto::machine::ApplyMode;
use crate::talos::grpc::proto::{cosi, machine};

/// The fields of `machine` whose changes apply to a running node (YAML names of the Go fields copied
/// in siderolabs/talos v1.13.9 `internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_runtime.go`
/// `CanApplyImmediate`: MachineCA, MachineAcceptedCAs, MachineTime, MachineCertSANs, MachineInstall,
/// MachineNetwork, MachineSysfs, MachineSysctls, MachineLogging, MachineControlPlane, MachineKubelet,
/// MachineKernel, MachineRegistries, MachinePods, MachineSeccompProfiles, MachineNodeAnnotations,
/// MachineNodeLabels, MachineNodeTaints; yaml tags from `pkg/machinery/config/types/v1alpha1/
/// v1alpha1_types.go`). v1.11.6 and v1.12.9 copy the same fields, so one rule serves every minor the
/// simulator runs.
const LIVE_MACHINE_FIELDS: &[&str] = &[
    "ca",
    "acceptedCAs",
    "time",
    "certSANs",
    "install",
    "network",
    "sysfs",
    "sysctls",
    "logging",
    "controlPlane",
    "kubelet",
    "kernel",
    "registries",
    "pods",
    "seccompProfiles",
    "nodeAnnotations",
    "nodeLabels",
    "nodeTaints",
];

/// `machine.features` fields that apply live, when both configs have `features` (same source).
const LIVE_FEATURE_FIELDS: &[&str] = &[
    "kubernetesTalosAPIAccess",
    "kubePrism",
    "hostDNS",
    "imageCache",
    "nodeAddressSortAlgorithm",
];

/// Whether `new` can replace `current` without a reboot. As Talos does it: only the v1alpha1 documents
/// are compared (every other document applies live), after copying into the new one what may change
/// live — `debug`, all of `cluster`, and the `machine` fields above. Anything else that differs
/// (`machine.type`, `token`, `env`, `files`, `disks`, other `features`, …) needs a reboot. The error
/// is Talos's message.
pub fn can_apply_immediate(current: &[Value], new: &[Value]) -> Result<(), String> {
    let current = config::v1alpha1(current).ok_or("current config is not v1alpha1")?;
    let mut new = config::v1alpha1(new)
        .ok_or("new config is not v1alpha1")?
        .clone();
    let (Value::Mapping(cur), Value::Mapping(next)) = (current, &mut new) else {
        return Err("current config is not v1alpha1".into());
    };
    copy(cur, next, "debug");
    copy(cur, next, "cluster");
    let key = |k: &str| Value::String(k.to_owned());
    if let (Some(Value::Mapping(cur_m)), Some(Value::Mapping(next_m))) =
        (cur.get(key("machine")), next.get_mut(key("machine")))
    {
        for f in LIVE_MACHINE_FIELDS {
            copy(cur_m, next_m, f);
        }
        if let (Some(Value::Mapping(cur_f)), Some(Value::Mapping(next_f))) =
            (cur_m.get(key("features")), next_m.get_mut(key("features")))
        {
            for f in LIVE_FEATURE_FIELDS {
                copy(cur_f, next_f, f);
            }
        }
    }
    if Value::Mapping(cur.clone()) == new {
        return Ok(());
    }
    Err(format!(
        "this config change can't be applied in immediate mode\ndiff:\n{}",
        changed_keys(current, &new).join("\n")
    ))
}

/// Go's assignment `new.F = current.F`: the field ends up as in `current`, absent when it is absent.
fn copy(from: &Mapping, to: &mut Mapping, field: &str) {
    let k = Value::String(field.to_owned());
    match from.get(&k) {
        Some(v) => {
            to.insert(k, v.clone());
        }
        None => {
            to.remove(&k);
        }
    }
}

/// The dotted paths that differ, for the message (Talos prints a unified diff).
fn changed_keys(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: Option<&Value>, b: Option<&Value>, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Mapping(x)), Some(Value::Mapping(y))) => {
                let mut keys: Vec<&Value> = x.keys().chain(y.keys()).collect();
                keys.dedup();
                for k in keys {
                    let name = k.as_str().unwrap_or("?");
                    let p = if path.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{path}.{name}")
                    };
                    if out.contains(&p) {
                        continue;
                    }
                    walk(x.get(k), y.get(k), p, out);
                }
            }
            (x, y) if x != y => out.push(format!("~ {path}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(a), Some(b), String::new(), &mut out);
    out
}

/// One ApplyConfiguration a node answered (refusals included), in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyRecord {
    pub node: SocketAddr,
    pub requested: ApplyMode,
    pub dry_run: bool,
    /// The mode the node chose (`None`: refused).
    pub chosen: Option<ApplyMode>,
}

/// Books one ApplyConfiguration: in the fleet for in-process tests, and one info line for the tests
/// that read the simulator's log (`apply config node=… mode=… dry_run=… chosen=…`).
pub fn record(
    fleet: &mut Fleet,
    node: SocketAddr,
    req: &machine::ApplyConfigurationRequest,
    result: &Result<machine::ApplyConfigurationResponse, tonic::Status>,
) {
    let requested = ApplyMode::try_from(req.mode).unwrap_or(ApplyMode::Reboot);
    let chosen = result.as_ref().ok().map(|r| {
        r.messages
            .first()
            .and_then(|m| ApplyMode::try_from(m.mode).ok())
            .unwrap_or(ApplyMode::Reboot)
    });
    let chosen_text = chosen.map_or_else(|| "refused".to_owned(), |m| format!("{m:?}"));
    tracing::info!(
        node = %node,
        mode = ?requested,
        dry_run = req.dry_run,
        chosen = %chosen_text,
        "apply config"
    );
    fleet.applies.push(ApplyRecord {
        node,
        requested,
        dry_run: req.dry_run,
        chosen,
    });
}

/// The dry run's "Config diff" part: which documents would change (Talos prints a unified diff).
pub fn diff_summary(current: &[u8], new: &[u8]) -> String {
    let changed = crate::talos::config::compare::differing_documents(
        &String::from_utf8_lossy(current),
        &String::from_utf8_lossy(new),
    );
    match changed {
        Ok(d) if d.is_empty() => "Config diff:\n\nNo changes.".into(),
        Ok(d) => format!("Config diff:\n\n{}", d.join("\n")),
        Err(e) => format!("Config diff:\n\n{e}"),
    }
}

/// `MachineConfigs.config.talos.dev` is `meta.Sensitive` (siderolabs/talos v1.13.9
/// `pkg/machinery/resources/config/machine_config.go`), which `internal/app/resources/access.go` lets
/// only `os:admin` read; the other resources are for every reader.
pub fn read_roles(resource_type: &str) -> &'static [&'static str] {
    if resource_type == MACHINE_CONFIG.1 {
        &[ADMIN]
    } else {
        &[ADMIN, OPERATOR, READER]
    }
}

/// The config a configured node runs, as Talos serves it: namespace `config`, id `v1alpha1` (the
/// active config), the spec a YAML string of the config's bytes (`spec: |`).
pub fn machine_config_resource(node: &Node) -> Option<cosi::Resource> {
    let c = node.configured()?;
    let text = Value::String(String::from_utf8_lossy(&c.raw).into_owned());
    let (ns, ty, id) = MACHINE_CONFIG;
    Some(super::handlers::resource(
        ns,
        ty,
        id,
        serde_yaml::to_string(&text).unwrap_or_default(),
    ))
}

impl SimTalos {
    /// Every ApplyConfiguration so far, in order.
    pub fn applies(&self) -> Vec<ApplyRecord> {
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .applies
            .clone()
    }

    /// A person changed the node's running config by hand (`talosctl edit mc`, or a patch): `edit`
    /// gets its documents; the node runs the result at once, without kiln hearing of it.
    pub fn edit_running_config(
        &self,
        addr: SocketAddr,
        edit: impl FnOnce(&mut Vec<Value>),
    ) -> Result<(), String> {
        let mut fleet = self.shared.fleet.lock().expect("fleet lock");
        let node = fleet
            .nodes
            .get_mut(&addr)
            .ok_or_else(|| format!("no simulated node at {addr}"))?;
        let super::fleet::Phase::Configured(c) = &mut node.phase else {
            return Err(format!("{addr} runs no config"));
        };
        let mut docs = config::documents(&c.raw)?;
        edit(&mut docs);
        let mut text = String::new();
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                text.push_str("---\n");
            }
            text.push_str(&serde_yaml::to_string(d).map_err(|e| e.to_string())?);
        }
        c.cfg = NodeConfig::from_documents(&docs)?;
        c.raw = text.into_bytes();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<Value> {
        config::documents(text.as_bytes()).unwrap()
    }

    const CURRENT: &str = "version: v1alpha1\ndebug: false\nmachine:\n  type: worker\n  token: t\n  nodeLabels: {a: b}\n  features:\n    rbac: true\n    kubePrism: {enabled: true}\ncluster:\n  clusterName: c\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: docker.io\nendpoints: [{url: 'https://a.lan'}]\n";

    #[test]
    fn live_fields_other_documents_and_the_cluster_apply_without_a_reboot() {
        for new in [
            CURRENT.replace("nodeLabels: {a: b}", "nodeLabels: {a: c}"),
            CURRENT.replace("https://a.lan", "https://b.lan"),
            CURRENT.replace("clusterName: c", "clusterName: d"),
            CURRENT.replace("kubePrism: {enabled: true}", "kubePrism: {enabled: false}"),
            CURRENT.replace("  nodeLabels: {a: b}\n", ""),
            CURRENT.replace("debug: false", "debug: true"),
        ] {
            assert_eq!(
                can_apply_immediate(&docs(CURRENT), &docs(&new)),
                Ok(()),
                "{new}"
            );
        }
    }

    #[test]
    fn other_machine_fields_need_a_reboot() {
        for (new, path) in [
            (
                CURRENT.replace("type: worker", "type: controlplane"),
                "machine.type",
            ),
            (
                CURRENT.replace("token: t", "token: u\n  env: {A: b}"),
                "machine.env",
            ),
            (
                CURRENT.replace("rbac: true", "rbac: false"),
                "machine.features.rbac",
            ),
        ] {
            let e = can_apply_immediate(&docs(CURRENT), &docs(&new)).unwrap_err();
            assert!(
                e.starts_with("this config change can't be applied in immediate mode"),
                "{e}"
            );
            assert!(e.contains(path), "{e}");
        }
    }
}
