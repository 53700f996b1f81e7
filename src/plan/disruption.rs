//! What each step of a plan disrupts, in the words an operator reads before merging a pull request.
//!
//! Derived from the action alone (it carries the node's name and role), so `kiln plan`, the JSON a CI
//! bot reads and the tests agree. The words follow what the executor really does (DESIGN §3, §4, §7):
//! - a resize of cores or memory is applied by a Proxmox reboot (`POST …/status/reboot`) after a
//!   cordon and drain, one node at a time (`reconcile::steps::vm::resize_vm`, `executor::batch_class`);
//! - a disk grows with `PUT …/resize` while the VM runs;
//! - a leaving control plane leaves etcd through Talos's graceful `Reset` (which cordons and drains
//!   it: `talosctl reset --graceful`), a leaving worker is drained by kiln, then the Node is deleted
//!   and the VM destroyed;
//! - a decommission destroys VMs without a drain or an etcd leave: the whole cluster goes;
//! - a control plane added to a running etcd joins as a learner and is promoted by Talos; the next
//!   one is created only once it is Ready and a voting member (`plan::join`).

use std::fmt;

use serde::Serialize;

use super::action::Action;
use crate::spec::{Role, Vmid};

/// A change applied to a running node without taking it out of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "change")]
pub enum OnlineChange {
    /// Proxmox grows the disk while the VM runs; Talos grows its partition on its own.
    DiskGrowth { from_gib: u64, to_gib: u64 },
}

/// The disruption one step causes to a running cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Disruption {
    /// Nothing serving is touched: a new or stopped VM, a node in maintenance, the secret store.
    None,
    /// A node is changed while it keeps serving.
    Online { node: String, change: OnlineChange },
    /// A node is drained and rebooted through Proxmox, then back in service before the next step.
    Reboot {
        node: String,
        role: Role,
        /// The disk grows online first, in the same step.
        grows_disk: Option<OnlineChange>,
    },
    /// Scale-down: the node leaves for good (a control plane's etcd member is removed), drained.
    NodeLeaves {
        node: String,
        role: Role,
        vmid: Vmid,
    },
    /// Decommission: the VM is destroyed without a drain, its cluster going as a whole.
    VmDestroyed { node: String, vmid: Vmid },
    /// Scale-up: a control plane becomes a member of the running etcd (once `after` is Ready).
    JoinsEtcd { node: String, after: Option<String> },
    /// A node's machine config is re-applied: live when Talos allows it, else with a reboot after a
    /// cordon and drain (`reconcile::steps::live_config`); `reboot: None` when the dry run did not say.
    ConfigApply {
        node: String,
        role: Role,
        reboot: Option<bool>,
    },
    /// A Talos upgrade: the node is drained and reboots into the new version (`plan::upgrade`).
    Upgrade {
        node: String,
        from: crate::spec::Version,
        to: crate::spec::Version,
    },
    /// A Kubernetes component moves on one node without a reboot (`plan::k8s_rollout`): a static
    /// pod or kube-proxy's image in a control plane's config, or a node's kubelet, which restarts.
    KubernetesComponent {
        node: String,
        component: super::k8s_rollout::Component,
        to: crate::spec::Version,
    },
}

impl Disruption {
    /// The node this disrupts, if one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Disruption::None => None,
            Disruption::Online { node, .. }
            | Disruption::Reboot { node, .. }
            | Disruption::NodeLeaves { node, .. }
            | Disruption::VmDestroyed { node, .. }
            | Disruption::JoinsEtcd { node, .. }
            | Disruption::ConfigApply { node, .. }
            | Disruption::Upgrade { node, .. }
            | Disruption::KubernetesComponent { node, .. } => Some(node),
        }
    }
}

impl Action {
    /// What this step disrupts when it runs.
    pub fn disruption(&self) -> Disruption {
        match self {
            Action::GenerateSecrets
            | Action::CreateVm { .. }
            | Action::FinishVm { .. }
            | Action::StartVm { .. }
            | Action::ApplyConfig { .. }
            | Action::Bootstrap { .. }
            | Action::StoreCredentials
            | Action::RenewCredentials { .. }
            | Action::WaitHealthy
            | Action::Uncordon { .. }
            | Action::SyncManifests { .. }
            | Action::RetireSecrets { .. } => Disruption::None,
            Action::ResizeVm {
                name,
                role,
                cores,
                memory_mib,
                disk_gib,
                ..
            } => {
                let grows_disk = disk_gib
                    .map(|(from_gib, to_gib)| OnlineChange::DiskGrowth { from_gib, to_gib });
                // Only cores and memory stay pending until a Proxmox power cycle (DESIGN §3).
                if cores.is_some() || memory_mib.is_some() {
                    Disruption::Reboot {
                        node: name.clone(),
                        role: *role,
                        grows_disk,
                    }
                } else if let Some(change) = grows_disk {
                    Disruption::Online {
                        node: name.clone(),
                        change,
                    }
                } else {
                    Disruption::None
                }
            }
            Action::RemoveNode {
                role, vmid, name, ..
            } => Disruption::NodeLeaves {
                node: name.clone(),
                role: *role,
                vmid: *vmid,
            },
            Action::DestroyVm { vmid, name, .. } => Disruption::VmDestroyed {
                node: name.clone(),
                vmid: *vmid,
            },
            Action::JoinControlPlane { name, after, .. } => Disruption::JoinsEtcd {
                node: name.clone(),
                after: after.clone(),
            },
            Action::UpdateConfig {
                name, role, reboot, ..
            } => Disruption::ConfigApply {
                node: name.clone(),
                role: *role,
                reboot: *reboot,
            },
            Action::UpgradeTalos { name, from, to, .. } => Disruption::Upgrade {
                node: name.clone(),
                from: *from,
                to: *to,
            },
            Action::UpgradeKubernetes {
                name,
                component,
                to,
                ..
            } => Disruption::KubernetesComponent {
                node: name.clone(),
                component: *component,
                to: *to,
            },
        }
    }
}

impl fmt::Display for OnlineChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnlineChange::DiskGrowth { from_gib, to_gib } => {
                write!(f, "grows the disk from {from_gib} to {to_gib} GiB online")
            }
        }
    }
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disruption::None => f.write_str("no disruption"),
            Disruption::Online {
                node,
                change: OnlineChange::DiskGrowth { from_gib, to_gib },
            } => write!(
                f,
                "grows the disk of {node} from {from_gib} to {to_gib} GiB online, no reboot"
            ),
            Disruption::Reboot {
                node,
                role,
                grows_disk,
            } => {
                write!(
                    f,
                    "reboots {node} through Proxmox to apply cores/memory (cordoned and drained first)"
                )?;
                if *role == Role::ControlPlane {
                    f.write_str("; its etcd member is down until it is back")?;
                }
                if let Some(OnlineChange::DiskGrowth { to_gib, .. }) = grows_disk {
                    write!(f, "; its disk grows to {to_gib} GiB before the reboot")?;
                }
                Ok(())
            }
            Disruption::NodeLeaves { node, role, vmid } => match role {
                Role::ControlPlane => write!(
                    f,
                    "removes {node} from etcd (Talos's graceful reset drains it), deletes its Node, destroys VM {vmid}"
                ),
                Role::Worker => write!(
                    f,
                    "drains {node}, deletes its Node, destroys VM {vmid} {node}"
                ),
            },
            Disruption::VmDestroyed { node, vmid } => write!(
                f,
                "destroys VM {vmid} {node} without a drain (the whole cluster goes)"
            ),
            Disruption::JoinsEtcd { node, after } => {
                write!(f, "adds control plane {node} to etcd")?;
                if let Some(after) = after {
                    write!(f, " (joins after {} is Ready)", short_name(after))?;
                }
                Ok(())
            }
            Disruption::ConfigApply { node, role, reboot } => match reboot {
                Some(false) => write!(f, "re-applies the config of {node} without a reboot"),
                Some(true) => {
                    write!(
                        f,
                        "reboots {node} to apply its config (cordoned and drained first)"
                    )?;
                    if *role == Role::ControlPlane {
                        f.write_str("; its etcd member is down until it is back")?;
                    }
                    Ok(())
                }
                None => write!(
                    f,
                    "re-applies the config of {node}; its dry run decides whether it reboots (then drained first)"
                ),
            },
            Disruption::Upgrade { node, from, to } => {
                write!(f, "upgrades {node} {from} → {to} (reboot)")
            }
            Disruption::KubernetesComponent {
                node,
                component: super::k8s_rollout::Component::Kubelet,
                to,
            } => write!(f, "restarts the kubelet of {node} on {to} (no reboot)"),
            Disruption::KubernetesComponent {
                node,
                component: super::k8s_rollout::Component::Proxy,
                to,
            } => write!(
                f,
                "names kube-proxy {to} in {node}'s config (no reboot; its DaemonSet follows with the manifests)"
            ),
            Disruption::KubernetesComponent {
                node,
                component,
                to,
            } => write!(f, "restarts {component} on {node} with {to} (no reboot)"),
        }
    }
}

/// `production-cp-1` → `cp-1`: the plan names the cluster once, the node it waits for briefly.
fn short_name(node: &str) -> &str {
    node.rfind("-cp-").map_or(node, |i| &node[i + 1..])
}

/// `--format json` carries the sentence next to the kind, so a CI bot can post it as it is.
#[derive(Serialize)]
pub(super) struct Shown<'a, T: Serialize + fmt::Display> {
    #[serde(flatten)]
    pub what: &'a T,
    pub text: String,
}

impl<'a, T: Serialize + fmt::Display> Shown<'a, T> {
    pub fn of(what: &'a T) -> Self {
        Shown {
            what,
            text: what.to_string(),
        }
    }
}

/// A cluster's disruption in one line: what an operator weighs before merging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DisruptionSummary {
    pub reboots: usize,
    /// Disks grown without a reboot (a resize that also reboots counts as a reboot).
    pub online_disk_growths: usize,
    pub etcd_members_removed: usize,
    /// Control planes joining etcd, one at a time.
    pub etcd_members_added: usize,
    pub workers_removed: usize,
    pub vms_destroyed: usize,
    /// Machine configs re-applied without a reboot (or whose dry run did not say).
    pub live_config_applies: usize,
    /// Kubernetes components restarted on a new version, one node at a time.
    pub kubernetes_restarts: usize,
}

impl DisruptionSummary {
    pub fn of<'a>(disruptions: impl IntoIterator<Item = &'a Disruption>) -> Self {
        let mut s = DisruptionSummary::default();
        for d in disruptions {
            match d {
                Disruption::None => {}
                Disruption::Online { .. } => s.online_disk_growths += 1,
                Disruption::Reboot { .. } | Disruption::Upgrade { .. } => s.reboots += 1,
                Disruption::NodeLeaves {
                    role: Role::ControlPlane,
                    ..
                } => s.etcd_members_removed += 1,
                Disruption::NodeLeaves {
                    role: Role::Worker, ..
                } => s.workers_removed += 1,
                Disruption::VmDestroyed { .. } => s.vms_destroyed += 1,
                Disruption::JoinsEtcd { .. } => s.etcd_members_added += 1,
                Disruption::ConfigApply {
                    reboot: Some(true), ..
                } => s.reboots += 1,
                Disruption::ConfigApply { .. } => s.live_config_applies += 1,
                Disruption::KubernetesComponent { .. } => s.kubernetes_restarts += 1,
            }
        }
        s
    }

    pub fn is_none(&self) -> bool {
        *self == DisruptionSummary::default()
    }
}

fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for DisruptionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("no disruption");
        }
        let mut parts = Vec::new();
        if self.reboots > 0 {
            let mut p = counted(self.reboots, "reboot", "reboots");
            // The executor never batches resizes (executor::batch_class): say so, it is what
            // makes several reboots acceptable.
            if self.reboots > 1 {
                p.push_str(", one at a time");
            }
            parts.push(p);
        }
        if self.online_disk_growths > 0 {
            parts.push(format!(
                "{} online",
                counted(self.online_disk_growths, "disk grown", "disks grown")
            ));
        }
        if self.live_config_applies > 0 {
            parts.push(format!(
                "{} re-applied live",
                counted(self.live_config_applies, "config", "configs")
            ));
        }
        if self.kubernetes_restarts > 0 {
            let mut p = format!(
                "{} restarted on a new Kubernetes",
                counted(self.kubernetes_restarts, "component", "components")
            );
            if self.kubernetes_restarts > 1 {
                p.push_str(", one at a time");
            }
            parts.push(p);
        }
        if self.etcd_members_removed > 0 {
            let mut p = format!(
                "{} removed",
                counted(self.etcd_members_removed, "etcd member", "etcd members")
            );
            if self.etcd_members_removed > 1 {
                p.push_str(", one at a time");
            }
            parts.push(p);
        }
        if self.etcd_members_added > 0 {
            let mut p = format!(
                "{} added",
                counted(self.etcd_members_added, "etcd member", "etcd members")
            );
            if self.etcd_members_added > 1 {
                p.push_str(", one at a time");
            }
            parts.push(p);
        }
        if self.workers_removed > 0 {
            let mut p = format!(
                "{} drained and removed",
                counted(self.workers_removed, "worker", "workers")
            );
            if self.workers_removed > 1 {
                p.push_str(", one at a time");
            }
            parts.push(p);
        }
        if self.vms_destroyed > 0 {
            // A decommission's destroys run side by side (executor::batch_class).
            parts.push(format!(
                "{} destroyed without a drain",
                counted(self.vms_destroyed, "VM", "VMs")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmid(n: u64) -> Vmid {
        Vmid::new(n).unwrap()
    }

    fn resize(
        role: Role,
        cores: Option<(u32, u32)>,
        memory_mib: Option<(u64, u64)>,
        disk_gib: Option<(u64, u64)>,
    ) -> Action {
        Action::ResizeVm {
            number: 4,
            vmid: vmid(404),
            name: "production-wk-4".into(),
            role,
            cores,
            memory_mib,
            disk_gib,
        }
    }

    #[test]
    fn steps_that_touch_nothing_serving_disrupt_nothing() {
        let quiet = [
            Action::GenerateSecrets,
            Action::CreateVm {
                number: 6,
                role: Role::Worker,
                vmid: vmid(406),
                name: "production-wk-6".into(),
                pve_node: "pve1".into(),
                template: vmid(9000),
            },
            Action::FinishVm {
                number: 6,
                vmid: vmid(406),
            },
            Action::StartVm {
                number: 5,
                vmid: vmid(405),
                name: "production-wk-5".into(),
            },
            Action::ApplyConfig {
                number: 6,
                name: "production-wk-6".into(),
            },
            Action::Bootstrap {
                number: 1,
                name: "production-cp-1".into(),
            },
            Action::StoreCredentials,
            Action::WaitHealthy,
            Action::RetireSecrets { destroy: false },
            Action::RetireSecrets { destroy: true },
        ];
        for a in &quiet {
            assert_eq!(a.disruption(), Disruption::None, "{a}");
            assert_eq!(a.disruption().to_string(), "no disruption");
        }
    }

    #[test]
    fn cores_or_memory_reboot_the_node_and_say_it_is_drained() {
        for a in [
            resize(Role::Worker, Some((2, 4)), None, None),
            resize(Role::Worker, None, Some((4096, 8192)), None),
        ] {
            assert_eq!(
                a.disruption(),
                Disruption::Reboot {
                    node: "production-wk-4".into(),
                    role: Role::Worker,
                    grows_disk: None
                }
            );
            let text = a.disruption().to_string();
            assert_eq!(
                text,
                "reboots production-wk-4 through Proxmox to apply cores/memory (cordoned and drained first)"
            );
        }
    }

    #[test]
    fn a_control_plane_reboot_says_its_etcd_member_is_down() {
        let text = resize(Role::ControlPlane, Some((2, 4)), None, Some((100, 200)))
            .disruption()
            .to_string();
        assert!(
            text.starts_with("reboots production-wk-4 through Proxmox"),
            "{text}"
        );
        assert!(
            text.contains("its etcd member is down until it is back"),
            "{text}"
        );
        assert!(
            text.contains("its disk grows to 200 GiB before the reboot"),
            "{text}"
        );
    }

    #[test]
    fn a_disk_alone_grows_online_without_a_reboot() {
        let d = resize(Role::Worker, None, None, Some((100, 200))).disruption();
        assert_eq!(
            d,
            Disruption::Online {
                node: "production-wk-4".into(),
                change: OnlineChange::DiskGrowth {
                    from_gib: 100,
                    to_gib: 200
                }
            }
        );
        assert_eq!(
            d.to_string(),
            "grows the disk of production-wk-4 from 100 to 200 GiB online, no reboot"
        );
    }

    #[test]
    fn a_leaving_control_plane_leaves_etcd_and_a_worker_is_drained() {
        let cp = Action::RemoveNode {
            number: 3,
            role: Role::ControlPlane,
            vmid: vmid(403),
            name: "production-cp-3".into(),
        };
        assert_eq!(
            cp.disruption().to_string(),
            "removes production-cp-3 from etcd (Talos's graceful reset drains it), deletes its Node, destroys VM 403"
        );
        let wk = Action::RemoveNode {
            number: 5,
            role: Role::Worker,
            vmid: vmid(405),
            name: "production-wk-5".into(),
        };
        assert_eq!(
            wk.disruption().to_string(),
            "drains production-wk-5, deletes its Node, destroys VM 405 production-wk-5"
        );
    }

    #[test]
    fn a_decommission_destroys_without_a_drain() {
        let a = Action::DestroyVm {
            number: 5,
            vmid: vmid(405),
            name: "production-wk-5".into(),
        };
        assert_eq!(
            a.disruption(),
            Disruption::VmDestroyed {
                node: "production-wk-5".into(),
                vmid: vmid(405)
            }
        );
        assert_eq!(
            a.disruption().to_string(),
            "destroys VM 405 production-wk-5 without a drain (the whole cluster goes)"
        );
    }

    #[test]
    fn the_summary_counts_each_kind_and_says_one_at_a_time() {
        let leave = |n: u32, role| Action::RemoveNode {
            number: n,
            role,
            vmid: vmid(400 + u64::from(n)),
            name: format!("n-{n}"),
        };
        let all: Vec<Disruption> = [
            resize(Role::Worker, Some((2, 4)), None, None),
            resize(Role::ControlPlane, None, Some((1, 2)), None),
            resize(Role::Worker, None, None, Some((1, 2))),
            leave(3, Role::ControlPlane),
            leave(5, Role::Worker),
            Action::WaitHealthy,
        ]
        .iter()
        .map(Action::disruption)
        .collect();
        let s = DisruptionSummary::of(&all);
        assert_eq!(
            s,
            DisruptionSummary {
                reboots: 2,
                online_disk_growths: 1,
                etcd_members_removed: 1,
                etcd_members_added: 0,
                workers_removed: 1,
                vms_destroyed: 0,
                live_config_applies: 0,
                kubernetes_restarts: 0,
            }
        );
        assert_eq!(
            s.to_string(),
            "2 reboots, one at a time; 1 disk grown online; 1 etcd member removed; 1 worker drained and removed"
        );
        assert_eq!(DisruptionSummary::of(&[]).to_string(), "no disruption");
        let one =
            DisruptionSummary::of(&[resize(Role::Worker, Some((2, 4)), None, None).disruption()]);
        assert_eq!(one.to_string(), "1 reboot");
    }

    #[test]
    fn json_carries_the_kind_its_fields_and_the_sentence() {
        let d = resize(Role::Worker, None, None, Some((100, 200))).disruption();
        let v = serde_json::to_value(Shown::of(&d)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "online",
                "node": "production-wk-4",
                "change": {"change": "disk-growth", "from_gib": 100, "to_gib": 200},
                "text": "grows the disk of production-wk-4 from 100 to 200 GiB online, no reboot",
            })
        );
        let none = serde_json::to_value(Shown::of(&Disruption::None)).unwrap();
        assert_eq!(
            none,
            serde_json::json!({"kind": "none", "text": "no disruption"})
        );
    }
}
