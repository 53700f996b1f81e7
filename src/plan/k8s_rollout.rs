//! A Kubernetes upgrade hop as `talosctl upgrade-k8s` runs it (siderolabs/talos v1.13.9
//! `pkg/cluster/kubernetes/talos_managed.go` `Upgrade`): the API server on every control plane one at
//! a time, then the controller manager, the scheduler and kube-proxy the same way, then the kubelet of
//! every node, control planes first (`kubelet.go` `upgradeKubelet`). Each change is one machine-config
//! apply with NO_REBOOT on one node; the next waits until it is healthy.
//!
//! Pure: from the versions each node's running config names, the changes still to make, in order.
//! The first is the one to make now; the rest are what `kiln plan` shows.

use std::fmt;

use serde::Serialize;

use crate::spec::{Role, Version};

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
}
