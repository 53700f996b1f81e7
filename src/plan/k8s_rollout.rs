//! A Kubernetes upgrade hop as `talosctl upgrade-k8s` runs it (siderolabs/talos v1.13.9
//! `pkg/cluster/kubernetes/talos_managed.go` `Upgrade`): the API server on every control plane one at
//! a time, then the controller manager, the scheduler and kube-proxy the same way, then the kubelet of
//! every node, control planes first (`kubelet.go` `upgradeKubelet`). Each change is one machine-config
//! apply with NO_REBOOT on one node; the next waits until it is healthy.
//!
//! Pure: from the versions each node's running config names, the changes still to make, in order.
//! The first is the one to make now; the rest are what `kiln plan` shows.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::action::{Action, Blocker, ClusterPlan, Step};
use super::upgrade::{self, VersionsObserved};
use super::version_path::{self, Hop, NoPath};
use crate::spec::{Cluster, Role, Version, talos_releases};

/// The parts of Kubernetes a machine config names an image for, in upgrade order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    ApiServer,
    ControllerManager,
    Scheduler,
    Proxy,
    Kubelet,
}

impl Component {
    pub const ORDER: [Component; 5] = [
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Proxy,
        Component::Kubelet,
    ];

    /// Static pods and kube-proxy's image live in control planes' configs only.
    pub fn control_plane_only(self) -> bool {
        self != Component::Kubelet
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Proxy => "kube-proxy",
            Component::Kubelet => "kubelet",
        })
    }
}

/// The versions a node's running config names (the image tags). A worker's config names only its
/// kubelet; the control-plane fields are then `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Running {
    pub apiserver: Option<Version>,
    pub controller_manager: Option<Version>,
    pub scheduler: Option<Version>,
    pub proxy: Option<Version>,
    pub kubelet: Option<Version>,
}

impl Running {
    /// A node of `role` whose config names `version` for everything its role runs.
    pub fn uniform(version: Version, role: Role) -> Self {
        let cp = (role == Role::ControlPlane).then_some(version);
        Running {
            apiserver: cp,
            controller_manager: cp,
            scheduler: cp,
            proxy: cp,
            kubelet: Some(version),
        }
    }

    pub fn get(&self, c: Component) -> Option<Version> {
        match c {
            Component::ApiServer => self.apiserver,
            Component::ControllerManager => self.controller_manager,
            Component::Scheduler => self.scheduler,
            Component::Proxy => self.proxy,
            Component::Kubelet => self.kubelet,
        }
    }

    pub fn set(&mut self, c: Component, v: Version) {
        let slot = match c {
            Component::ApiServer => &mut self.apiserver,
            Component::ControllerManager => &mut self.controller_manager,
            Component::Scheduler => &mut self.scheduler,
            Component::Proxy => &mut self.proxy,
            Component::Kubelet => &mut self.kubelet,
        };
        *slot = Some(v);
    }

    /// The lowest version any of its components runs: what the cluster's Kubernetes is, for the
    /// order of a combined change.
    pub fn lowest(&self) -> Option<Version> {
        Component::ORDER
            .iter()
            .filter_map(|c| self.get(*c))
            .min_by_key(|v| (v.major, v.minor, v.patch))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRunning {
    pub number: u32,
    pub name: String,
    pub role: Role,
    pub running: Running,
}

/// One config change of the hop: `component` on node `number` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub number: u32,
    pub name: String,
    pub component: Component,
    pub from: Option<Version>,
    pub to: Version,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(
                f,
                "{} on {}: {from} → {}",
                self.component, self.name, self.to
            ),
            None => write!(f, "{} on {}: → {}", self.component, self.name, self.to),
        }
    }
}

fn below(v: Option<Version>, target: Version) -> bool {
    let key = |v: Version| (v.major, v.minor, v.patch);
    v.is_none_or(|v| key(v) < key(target))
}

/// The changes still to make to bring every node to `target`, in the order talosctl makes them. A
/// component already at or above `target` is left alone (a downgrade is `plan::version_path`'s
/// refusal, never a step).
pub fn remaining(nodes: &[NodeRunning], target: Version) -> Vec<Change> {
    let mut ordered: Vec<&NodeRunning> = nodes.iter().collect();
    ordered.sort_by_key(|n| (n.role != Role::ControlPlane, n.number));
    let mut changes = Vec::new();
    for component in Component::ORDER {
        for node in &ordered {
            if component.control_plane_only() && node.role != Role::ControlPlane {
                continue;
            }
            let from = node.running.get(component);
            if below(from, target) {
                changes.push(Change {
                    number: node.number,
                    name: node.name.clone(),
                    component,
                    from,
                    to: target,
                });
            }
        }
    }
    changes
}

/// What node `change.number` runs after the change: its running versions with one moved. The
/// caller renders that node's config from it.
pub fn after(running: Running, change: &Change) -> Running {
    let mut next = running;
    next.set(change.component, change.to);
    next
}

/// The patch an intermediate Kubernetes minor lands on: the default Kubernetes of the last Talos
/// release that shipped that minor as its default (`pkg/machinery/constants/constants.go`
/// `DefaultKubernetesVersion` at v1.6.8, v1.7.7, v1.8.4, v1.9.6, v1.10.9, v1.11.6, v1.12.11,
/// v1.13.9): the patch Talos itself tested. The last hop lands on the file's own version.
pub fn intermediate_patch(minor: (u32, u32)) -> Option<Version> {
    const TESTED: [(u32, u32, u32); 8] = [
        (1, 29, 7),
        (1, 30, 5),
        (1, 31, 4),
        (1, 32, 4),
        (1, 33, 6),
        (1, 34, 1),
        (1, 35, 4),
        (1, 36, 3),
    ];
    TESTED
        .iter()
        .find(|(a, b, _)| (*a, *b) == minor)
        .map(|&(a, b, c)| Version::new(a, b, c))
}

/// What the deep observation saw of the cluster's Kubernetes (only a deep look reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KubernetesObserved {
    /// Node number → what its running machine config names (configured nodes whose config was read).
    pub running: BTreeMap<u32, Running>,
    /// Whether kube-proxy's DaemonSet runs the image the control planes' configs name: `Some(false)`
    /// after a hop whose manifests were not applied yet; `None` when not asked or absent.
    pub manifests_current: Option<bool>,
}

/// The patch a Kubernetes hop to `minor` lands on: the file's own version on the last hop.
fn hop_target(minor: (u32, u32), spec: Version) -> Option<Version> {
    if minor == spec.minor_line() {
        Some(spec)
    } else {
        intermediate_patch(minor)
    }
}

/// Plans the version changes of `desired` from what the nodes run: Talos upgrades
/// (`plan::upgrade`) and Kubernetes hops, in the order `plan::version_path` finds, so that every
/// (Talos, Kubernetes) pair on the way is one Talos runs. One kind of change at a time: a Talos
/// upgrade never overlaps a Kubernetes hop.
pub(super) fn plan_version_changes(
    plan: &mut ClusterPlan,
    desired: &Cluster,
    talos: &VersionsObserved,
    kubernetes: Option<&KubernetesObserved>,
) {
    let key = |v: &Version| (v.major, v.minor, v.patch);
    let lowest_talos = talos.running.values().min_by_key(|v| key(v)).copied();
    let lowest_k8s = kubernetes.and_then(|k| {
        k.running
            .values()
            .filter_map(Running::lowest)
            .min_by_key(key)
    });
    let (Some(kubernetes), Some(t), Some(k)) = (kubernetes, lowest_talos, lowest_k8s) else {
        upgrade::plan_upgrades(plan, desired, talos);
        return;
    };
    let spec_talos = desired.spec.talos.version;
    let spec_k8s = desired.spec.kubernetes.version;
    let hops = match version_path::path(
        (t.minor_line(), k.minor_line()),
        (spec_talos.minor_line(), spec_k8s.minor_line()),
    ) {
        Ok(hops) => hops,
        // A node newer than the file: plan::upgrade says which one, and how to pin it.
        Err(NoPath::TalosDowngrade { .. }) => {
            upgrade::plan_upgrades(plan, desired, talos);
            return;
        }
        Err(e) => {
            plan.blockers.push(Blocker::Refused(format!(
                "spec.talos.version {spec_talos} with spec.kubernetes.version {spec_k8s}: {e}"
            )));
            return;
        }
    };
    // A finished Kubernetes hop's manifests come before anything else moves, as the last part of
    // `talosctl upgrade-k8s`.
    if kubernetes.manifests_current == Some(false) && hop_done(desired, kubernetes) {
        let to = control_plane_proxy(desired, kubernetes).unwrap_or(k);
        plan.steps.push(Step {
            action: Action::SyncManifests { to },
            reason: format!(
                "kube-proxy's DaemonSet does not run the kube-proxy {to} the control planes' configs name"
            ),
        });
        return;
    }
    // Every hop is listed, so `kiln plan` shows the whole way; the executor runs the first and a
    // Talos upgrade ends the turn, so what follows is planned again from what the nodes then run.
    let mut talos_now = talos.clone();
    let mut k8s_now = kubernetes.clone();
    let mut i = 0;
    while i < hops.len() {
        match hops[i] {
            Hop::Kubernetes(minor) => {
                let Some(to) = hop_target(minor, spec_k8s) else {
                    plan.blockers.push(Blocker::Refused(format!(
                        "kiln knows no tested patch of Kubernetes {}.{} to pass through",
                        minor.0, minor.1
                    )));
                    return;
                };
                plan_hop(plan, desired, &k8s_now, to, &hops);
                k8s_now = moved_to(desired, &k8s_now, to);
                i += 1;
            }
            Hop::Talos(_) => {
                // Talos goes as far as the path allows before its next Kubernetes hop.
                let run = hops[i..]
                    .iter()
                    .take_while(|h| matches!(h, Hop::Talos(_)))
                    .count();
                let Hop::Talos(last) = hops[i + run - 1] else {
                    unreachable!("counted Talos hops only")
                };
                let stop = if last == spec_talos.minor_line() {
                    spec_talos
                } else if let Some(v) = talos_releases::latest_patch(last) {
                    v
                } else {
                    plan.blockers.push(Blocker::Refused(format!(
                        "kiln knows no latest patch of Talos {}.{} to stop at",
                        last.0, last.1
                    )));
                    return;
                };
                upgrade::plan_upgrades_to(plan, desired, &talos_now, stop);
                if !plan.blockers.is_empty() {
                    return;
                }
                for v in talos_now.running.values_mut() {
                    *v = stop;
                }
                i += run;
            }
        }
    }
    // Within the minors: Talos patches first, then Kubernetes's.
    upgrade::plan_upgrades(plan, desired, &talos_now);
    if plan.blockers.is_empty() {
        plan_hop(plan, desired, &k8s_now, spec_k8s, &hops);
    }
}

/// What every node runs once a hop to `to` is done.
fn moved_to(desired: &Cluster, kubernetes: &KubernetesObserved, to: Version) -> KubernetesObserved {
    let mut out = kubernetes.clone();
    for node in &desired.nodes {
        if let Some(r) = out.running.get_mut(&node.number) {
            *r = Running::uniform(to, node.role);
        }
    }
    out.manifests_current = Some(true);
    out
}

/// Every node's every component at one version: no hop is half done.
fn hop_done(desired: &Cluster, kubernetes: &KubernetesObserved) -> bool {
    let mut versions = desired
        .nodes
        .iter()
        .filter_map(|n| kubernetes.running.get(&n.number))
        .flat_map(|r| Component::ORDER.into_iter().filter_map(|c| r.get(c)));
    let Some(first) = versions.next() else {
        return false;
    };
    versions.all(|v| v == first)
}

/// The kube-proxy version the control planes' configs name, when they agree.
fn control_plane_proxy(desired: &Cluster, kubernetes: &KubernetesObserved) -> Option<Version> {
    let mut proxies = desired
        .control_planes()
        .filter_map(|n| kubernetes.running.get(&n.number))
        .map(|r| r.proxy);
    let first = proxies.next()??;
    proxies.all(|p| p == Some(first)).then_some(first)
}

fn plan_hop(
    plan: &mut ClusterPlan,
    desired: &Cluster,
    kubernetes: &KubernetesObserved,
    to: Version,
    hops: &[Hop],
) {
    let nodes: Vec<NodeRunning> = desired
        .nodes
        .iter()
        .filter_map(|n| {
            kubernetes.running.get(&n.number).map(|r| NodeRunning {
                number: n.number,
                name: n.name.clone(),
                role: n.role,
                running: *r,
            })
        })
        .collect();
    let path: Vec<String> = hops.iter().map(Hop::to_string).collect();
    let changes = remaining(&nodes, to);
    let moves = !changes.is_empty();
    for change in changes {
        plan.steps.push(Step {
            reason: if path.len() > 1 {
                format!(
                    "spec.kubernetes.version is {}; the way there: {}",
                    desired.spec.kubernetes.version,
                    path.join(" → ")
                )
            } else {
                format!(
                    "spec.kubernetes.version is {}",
                    desired.spec.kubernetes.version
                )
            },
            action: Action::UpgradeKubernetes {
                number: change.number,
                name: change.name,
                component: change.component,
                from: change.from,
                to: change.to,
            },
        });
    }
    // The hop ends as upgrade-k8s ends: the manifests, once every component runs `to`.
    if moves {
        plan.steps.push(Step {
            action: Action::SyncManifests { to },
            reason: format!("the last part of the hop to Kubernetes {to}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn cp(number: u32, at: &str) -> NodeRunning {
        let at = Some(v(at));
        NodeRunning {
            number,
            name: format!("c-cp-{number}"),
            role: Role::ControlPlane,
            running: Running {
                apiserver: at,
                controller_manager: at,
                scheduler: at,
                proxy: at,
                kubelet: at,
            },
        }
    }

    fn wk(number: u32, at: &str) -> NodeRunning {
        NodeRunning {
            number,
            name: format!("c-wk-{number}"),
            role: Role::Worker,
            running: Running {
                kubelet: Some(v(at)),
                ..Running::default()
            },
        }
    }

    #[test]
    fn static_pods_node_by_node_then_kubelets_control_planes_first() {
        // Workers listed first on purpose: the order comes from roles and numbers.
        let nodes = [wk(4, "v1.34.1"), cp(2, "v1.34.1"), cp(1, "v1.34.1")];
        let order: Vec<String> = remaining(&nodes, v("v1.35.4"))
            .iter()
            .map(|c| format!("{} {}", c.component, c.number))
            .collect();
        assert_eq!(
            order,
            [
                "kube-apiserver 1",
                "kube-apiserver 2",
                "kube-controller-manager 1",
                "kube-controller-manager 2",
                "kube-scheduler 1",
                "kube-scheduler 2",
                "kube-proxy 1",
                "kube-proxy 2",
                "kubelet 1",
                "kubelet 2",
                "kubelet 4",
            ]
        );
    }

    #[test]
    fn a_half_done_hop_resumes_where_it_stopped() {
        let mut first = cp(1, "v1.34.1");
        first.running.apiserver = Some(v("v1.35.4"));
        let nodes = [first, cp(2, "v1.34.1"), wk(3, "v1.34.1")];
        let next = &remaining(&nodes, v("v1.35.4"))[0];
        assert_eq!((next.component, next.number), (Component::ApiServer, 2));
        assert_eq!(
            next.to_string(),
            "kube-apiserver on c-cp-2: v1.34.1 → v1.35.4"
        );
        let moved = after(nodes[1].running, next);
        assert_eq!(moved.apiserver, Some(v("v1.35.4")));
        assert_eq!(
            moved.kubelet,
            Some(v("v1.34.1")),
            "only one component moves"
        );
    }

    #[test]
    fn nothing_left_when_every_node_runs_the_target_or_newer() {
        assert!(remaining(&[cp(1, "v1.35.4"), wk(2, "v1.35.4")], v("v1.35.4")).is_empty());
        assert!(remaining(&[cp(1, "v1.36.0")], v("v1.35.4")).is_empty());
    }

    #[test]
    fn the_lowest_component_is_the_clusters_version() {
        let mut node = cp(1, "v1.35.4");
        node.running.kubelet = Some(v("v1.34.1"));
        assert_eq!(node.running.lowest(), Some(v("v1.34.1")));
    }

    #[test]
    fn intermediate_minors_land_on_a_patch_talos_tested() {
        assert_eq!(intermediate_patch((1, 35)), Some(v("v1.35.4")));
        assert_eq!(intermediate_patch((1, 28)), None);
    }
    mod planning {
        use super::super::*;
        use crate::plan::PlanKind;
        use crate::spec::ClusterDocument;

        fn v(s: &str) -> Version {
            s.parse().unwrap()
        }

        /// Three control planes and a worker, the file asking for `talos` + `k8s`.
        fn cluster(talos: &str, k8s: &str) -> Cluster {
            let yaml = format!(
                "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  proxmox:\n    \
                 node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: 40\n  \
                 talos:\n    version: {talos}\n  kubernetes:\n    version: {k8s}\n  network:\n    vip: 10.0.0.10\n    \
                 gateway: 10.0.0.1\n    prefixLength: 24\n    nameservers: [10.0.0.1]\n  controlPlane:\n    \
                 resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n      - {{ip: 10.0.0.11}}\n      \
                 - {{ip: 10.0.0.12}}\n      - {{ip: 10.0.0.13}}\n  workers:\n    resources: {{cores: 2, memoryGiB: 4, \
                 diskGiB: 20}}\n    nodes:\n      - {{ip: 10.0.0.14}}\n"
            );
            let doc: ClusterDocument = serde_yaml::from_str(&yaml).unwrap();
            Cluster::expand(&doc).unwrap()
        }

        fn seen(c: &Cluster, talos: &str, k8s: &str) -> (VersionsObserved, KubernetesObserved) {
            (
                VersionsObserved {
                    running: c.nodes.iter().map(|n| (n.number, v(talos))).collect(),
                    etcd_members: Some(3),
                    failed: None,
                    nodes_ready: Some(true),
                },
                KubernetesObserved {
                    running: c
                        .nodes
                        .iter()
                        .map(|n| (n.number, Running::uniform(v(k8s), n.role)))
                        .collect(),
                    manifests_current: Some(true),
                },
            )
        }

        fn planned(c: &Cluster, talos: &VersionsObserved, k8s: &KubernetesObserved) -> ClusterPlan {
            let mut plan = ClusterPlan {
                cluster: c.name.clone(),
                kind: PlanKind::Converge,
                steps: Vec::new(),
                blockers: Vec::new(),
                reports: Vec::new(),
            };
            plan_version_changes(&mut plan, c, talos, Some(k8s));
            plan
        }

        /// The plan as the runs of one kind of change: `talos v1.13.9`, `kubernetes v1.35.4`, ….
        fn phases(plan: &ClusterPlan) -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for s in &plan.steps {
                let label = match &s.action {
                    Action::UpgradeTalos { to, .. } => format!("talos {to}"),
                    Action::UpgradeKubernetes { to, .. } => format!("kubernetes {to}"),
                    Action::SyncManifests { to } => format!("manifests {to}"),
                    other => format!("{other}"),
                };
                if out.last() != Some(&label) {
                    out.push(label);
                }
            }
            out
        }

        fn lines(plan: &ClusterPlan) -> Vec<String> {
            plan.steps.iter().map(|s| s.action.to_string()).collect()
        }

        #[test]
        fn a_kubernetes_minor_moves_component_by_component_without_talos() {
            let c = cluster("v1.13.9", "v1.35.4");
            let (t, k) = seen(&c, "v1.13.9", "v1.34.1");
            let plan = planned(&c, &t, &k);
            let got = lines(&plan);
            assert_eq!(got.len(), 3 * 4 + 4 + 1, "{got:#?}");
            assert_eq!(got[0], "move kube-apiserver on c-cp-1: v1.34.1 → v1.35.4");
            assert_eq!(got[12], "move kubelet on c-cp-1: v1.34.1 → v1.35.4");
            assert_eq!(got[15], "move kubelet on c-wk-4: v1.34.1 → v1.35.4");
            assert_eq!(
                plan.steps[16].action,
                Action::SyncManifests { to: v("v1.35.4") },
                "the manifests end the hop"
            );
            assert!(plan.blockers.is_empty());
        }

        #[test]
        fn a_combined_change_moves_kubernetes_first_only_as_far_as_the_next_talos_needs() {
            // Talos 1.13 does not run Kubernetes 1.30: 1.31 (Talos's tested patch) comes first, then
            // Talos, then Kubernetes one minor at a time. The whole way is listed.
            let c = cluster("v1.13.9", "v1.34.1");
            let (t, k) = seen(&c, "v1.12.11", "v1.30.5");
            let plan = planned(&c, &t, &k);
            assert_eq!(
                phases(&plan),
                [
                    "kubernetes v1.31.4",
                    "manifests v1.31.4",
                    "talos v1.13.9",
                    "kubernetes v1.32.4",
                    "manifests v1.32.4",
                    "kubernetes v1.33.6",
                    "manifests v1.33.6",
                    "kubernetes v1.34.1",
                    "manifests v1.34.1",
                ],
                "{:#?}",
                lines(&plan)
            );
            assert!(
                plan.steps[0].reason.contains(
                    "Kubernetes 1.31 → Talos 1.13 → Kubernetes 1.32 → Kubernetes 1.33 → Kubernetes 1.34"
                ),
                "{}",
                plan.steps[0].reason
            );
            // Once it runs 1.31: Talos first.
            let (t, k) = seen(&c, "v1.12.11", "v1.31.4");
            let plan = planned(&c, &t, &k);
            assert_eq!(phases(&plan)[0], "talos v1.13.9", "{:#?}", lines(&plan));
        }

        #[test]
        fn talos_stops_where_kubernetes_must_move_before_the_next_minor() {
            // Talos 1.11 + Kubernetes 1.30 → 1.13 + 1.31: Talos 1.12 runs 1.30, so Talos moves first,
            // but 1.13 does not, so Talos stops at 1.12's latest patch for Kubernetes 1.31.
            let c = cluster("v1.13.9", "v1.31.4");
            let (t, k) = seen(&c, "v1.11.6", "v1.30.5");
            let plan = planned(&c, &t, &k);
            assert_eq!(
                phases(&plan),
                [
                    "talos v1.12.11",
                    "kubernetes v1.31.4",
                    "manifests v1.31.4",
                    "talos v1.13.9"
                ],
                "{:#?}",
                lines(&plan)
            );
        }

        #[test]
        fn an_impossible_pair_is_refused_with_the_way_there() {
            let c = cluster("v1.13.9", "v1.30.5");
            let (t, k) = seen(&c, "v1.11.6", "v1.29.7");
            let plan = planned(&c, &t, &k);
            assert!(plan.steps.is_empty());
            let text = plan.blockers[0].to_string();
            assert!(
                text.contains("Talos 1.13 runs Kubernetes 1.31–1.36"),
                "{text}"
            );
            assert!(
                text.contains("ask for Kubernetes 1.31 with Talos 1.13 instead"),
                "{text}"
            );
        }

        #[test]
        fn a_finished_hop_syncs_its_manifests_before_anything_else() {
            let c = cluster("v1.13.9", "v1.35.4");
            let (t, mut k) = seen(&c, "v1.13.9", "v1.35.4");
            k.manifests_current = Some(false);
            let plan = planned(&c, &t, &k);
            assert_eq!(
                plan.steps
                    .iter()
                    .map(|s| s.action.clone())
                    .collect::<Vec<_>>(),
                vec![Action::SyncManifests { to: v("v1.35.4") }]
            );
            // Mid-hop, the manifests wait for the kubelets: they come last.
            let (t, mut k) = seen(&c, "v1.13.9", "v1.34.1");
            k.manifests_current = Some(false);
            k.running.get_mut(&1).unwrap().apiserver = Some(v("v1.35.4"));
            let plan = planned(&c, &t, &k);
            let syncs: Vec<usize> = plan
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.action, Action::SyncManifests { .. }))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(syncs, vec![plan.steps.len() - 1], "{:#?}", lines(&plan));
        }

        #[test]
        fn a_newer_kubernetes_than_the_file_is_refused() {
            let c = cluster("v1.13.9", "v1.34.1");
            let (t, k) = seen(&c, "v1.13.9", "v1.35.4");
            let plan = planned(&c, &t, &k);
            assert!(
                plan.blockers[0].to_string().contains("downgrade"),
                "{:?}",
                plan.blockers
            );
        }
    }
}
