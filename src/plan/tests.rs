use super::*;
use crate::spec::ClusterDocument;

fn production_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/clusters/production.yaml"
    ))
    .expect("example file")
}

fn cluster_from(text: &str) -> Cluster {
    let doc: ClusterDocument = serde_yaml::from_str(text).expect("valid example");
    Cluster::expand(&doc).expect("expands")
}

fn production() -> Cluster {
    cluster_from(&production_text())
}

/// A VM of kiln's, running, exactly as `node` asks (also used by `reconcile::observe`'s tests).
pub(crate) fn owned(node: &Node) -> ObservedVm {
    ObservedVm {
        number: node.number,
        role: node.role,
        vmid: node.vmid,
        name: node.name.clone(),
        pve_node: node.pve_node.clone(),
        power: Power::Running,
        ownership: Ownership::Owned,
        cores: Some(node.resources.cores),
        memory_mib: Some(u64::from(node.resources.memory_gib) * 1024),
        disk_gib: Some(u64::from(node.resources.disk_gib)),
        pending_changes: false,
        lock: None,
    }
}

fn all_stored() -> SecretsObserved {
    SecretsObserved {
        bundle: BundleState::Present,
        bootstrapped: true,
        kubeconfig_stored: true,
        talosconfig_stored: true,
        decommissioned: false,
        credentials: Default::default(),
    }
}

fn converged(c: &Cluster) -> ObservedCluster {
    ObservedCluster {
        vms: c.nodes.iter().map(|n| (n.number, owned(n))).collect(),
        conflicts: vec![],
        secrets: Some(all_stored()),
        nodes: None,
        healthy: None,
        running_configs: None,
        versions: None,
        kubernetes: None,
        cordoned_by_kiln: Vec::new(),
    }
}

fn run(desired: &Cluster, previous: Option<&Cluster>, observed: &ObservedCluster) -> ClusterPlan {
    converge(ConvergeInput {
        desired,
        previous,
        observed,
        drift_policy: DriftPolicy::Repair,
        intent_changed: true,
    })
}

fn actions(plan: &ClusterPlan) -> Vec<&Action> {
    plan.steps.iter().map(|s| &s.action).collect()
}

#[test]
fn new_cluster_plans_the_whole_chain_in_order() {
    let c = production();
    let observed = ObservedCluster {
        secrets: Some(SecretsObserved {
            bundle: BundleState::Absent,
            bootstrapped: false,
            kubeconfig_stored: false,
            talosconfig_stored: false,
            decommissioned: false,
            credentials: Default::default(),
        }),
        ..Default::default()
    };
    let plan = run(&c, None, &observed);
    assert!(plan.blockers.is_empty(), "{plan}");
    let a = actions(&plan);
    assert_eq!(a[0], &Action::GenerateSecrets);
    let created: Vec<(u32, String)> = a
        .iter()
        .filter_map(|x| match x {
            Action::CreateVm { vmid, name, .. } => Some((vmid.get(), name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        vec![
            (401, "production-cp-1".to_owned()),
            (402, "production-cp-2".to_owned()),
            (403, "production-cp-3".to_owned()),
            (404, "production-wk-4".to_owned()),
            (405, "production-wk-5".to_owned()),
        ]
    );
    let applies = a
        .iter()
        .filter(|x| matches!(x, Action::ApplyConfig { .. }))
        .count();
    assert_eq!(applies, 5);
    let bootstraps: Vec<_> = a
        .iter()
        .filter(|x| matches!(x, Action::Bootstrap { .. }))
        .collect();
    assert_eq!(
        bootstraps,
        vec![&&Action::Bootstrap {
            number: 1,
            name: "production-cp-1".into()
        }]
    );
    let pos = |pred: fn(&&Action) -> bool| a.iter().position(pred).unwrap();
    assert!(
        pos(|x| matches!(x, Action::CreateVm { .. }))
            < pos(|x| matches!(x, Action::ApplyConfig { .. }))
    );
    assert!(
        pos(|x| matches!(x, Action::ApplyConfig { .. }))
            < pos(|x| matches!(x, Action::Bootstrap { .. }))
    );
    assert!(
        pos(|x| matches!(x, Action::Bootstrap { .. }))
            < pos(|x| matches!(x, Action::StoreCredentials))
    );
    assert_eq!(a.last(), Some(&&Action::WaitHealthy));
    assert_eq!(plan.count(Effect::Create), 6);
    assert_eq!(plan.count(Effect::Destroy), 0);
}

#[test]
fn converged_cluster_is_a_noop_and_plans_are_deterministic() {
    let c = production();
    let observed = converged(&c);
    let plan = run(&c, Some(&c), &observed);
    assert!(plan.is_noop(), "{plan}");
    assert!(plan.blockers.is_empty());
    assert_eq!(plan, run(&c, Some(&c), &observed));
}

#[test]
fn missing_bundle_with_vms_blocks_and_never_regenerates() {
    let c = production();
    let mut observed = converged(&c);
    observed.secrets.as_mut().unwrap().bundle = BundleState::Absent;
    let plan = run(&c, Some(&c), &observed);
    assert!(plan.steps.is_empty());
    assert!(matches!(plan.blockers[0], Blocker::Blocked(_)));

    observed.secrets.as_mut().unwrap().bundle = BundleState::Unreadable("soft-deleted".into());
    observed.vms.clear();
    let plan = run(&c, None, &observed);
    assert!(plan.steps.is_empty(), "{plan}");
    assert!(plan.blockers[0].to_string().contains("soft-deleted"));
}

#[test]
fn half_made_vm_is_finished_not_cloned_again() {
    let c = production();
    let mut observed = converged(&c);
    let vm = observed.vms.get_mut(&2).unwrap();
    vm.ownership = Ownership::HalfMade;
    vm.power = Power::Stopped;
    let plan = run(&c, Some(&c), &observed);
    let a = actions(&plan);
    assert!(a.contains(&&Action::FinishVm {
        number: 2,
        vmid: Vmid::new(402).unwrap()
    }));
    assert!(!a.iter().any(|x| matches!(x, Action::CreateVm { .. })));
}

#[test]
fn disks_only_grow() {
    let c = production();
    let mut observed = converged(&c);
    observed.vms.get_mut(&4).unwrap().disk_gib = Some(500);
    let plan = run(&c, Some(&c), &observed);
    assert!(
        plan.blockers
            .iter()
            .any(|b| matches!(b, Blocker::Refused(m) if m.contains("only grow"))),
        "{plan}"
    );
    observed.vms.get_mut(&4).unwrap().disk_gib = Some(100);
    let plan = run(&c, Some(&c), &observed);
    assert!(actions(&plan).iter().any(|x| matches!(
        x,
        Action::ResizeVm {
            number: 4,
            disk_gib: Some((100, 200)),
            cores: None,
            memory_mib: None,
            ..
        }
    )));
}

#[test]
fn drift_is_repaired_or_reported_by_policy() {
    let c = production();
    let mut observed = converged(&c);
    observed.vms.get_mut(&5).unwrap().power = Power::Stopped;
    observed.vms.get_mut(&3).unwrap().cores = Some(2);
    let report = converge(ConvergeInput {
        desired: &c,
        previous: Some(&c),
        observed: &observed,
        drift_policy: DriftPolicy::Report,
        intent_changed: false,
    });
    assert!(report.is_noop(), "{report}");
    assert_eq!(report.reports.len(), 2, "{report}");
    assert!(report.reports.iter().all(|r| r.is_drift()), "{report}");
    let repair = converge(ConvergeInput {
        desired: &c,
        previous: Some(&c),
        observed: &observed,
        drift_policy: DriftPolicy::Repair,
        intent_changed: false,
    });
    let a = actions(&repair);
    assert!(a.contains(&&Action::StartVm {
        number: 5,
        vmid: Vmid::new(405).unwrap(),
        name: "production-wk-5".into(),
    }));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::ResizeVm {
            number: 3,
            cores: Some((2, 4)),
            ..
        }
    )));
}

#[test]
fn unknown_power_is_not_stopped() {
    let c = production();
    let mut observed = converged(&c);
    observed.vms.get_mut(&1).unwrap().power = Power::Unknown;
    assert!(run(&c, Some(&c), &observed).is_noop());
}

#[test]
fn adding_a_control_plane_without_pins_is_refused_with_the_pins() {
    let before = production();
    let text = production_text().replace(
        "      - {ip: 192.168.2.163}\n",
        "      - {ip: 192.168.2.163}\n      - {ip: 192.168.2.166}\n",
    );
    let after = cluster_from(&text);
    let plan = run(&after, Some(&before), &converged(&before));
    assert!(plan.steps.is_empty());
    let msg = plan.blockers[0].to_string();
    assert!(msg.contains("renumbers"), "{msg}");
    assert!(msg.contains("{ip: 192.168.2.164, number: 4}"), "{msg}");
    assert!(msg.contains("{ip: 192.168.2.166, number: 6}"), "{msg}");
}

#[test]
fn removing_a_middle_worker_is_refused_removing_the_last_scales_down() {
    let before = production();
    let middle = production_text().replace("      - {ip: 192.168.2.164}\n", "");
    // Without the first worker, the pinned 5 stays 5: only unpinned entries could move.
    let plan = run(&cluster_from(&middle), Some(&before), &converged(&before));
    assert!(plan.blockers.is_empty(), "{plan}");
    assert!(
        actions(&plan)
            .iter()
            .any(|x| matches!(x, Action::RemoveNode { number: 4, .. }))
    );

    let unpinned =
        production_text().replace("{ip: 192.168.2.165, number: 5}", "{ip: 192.168.2.165}");
    let before = cluster_from(&unpinned);
    let middle = unpinned.replace("      - {ip: 192.168.2.164}\n", "");
    let plan = run(&cluster_from(&middle), Some(&before), &converged(&before));
    assert!(matches!(plan.blockers[0], Blocker::Refused(_)), "{plan}");
    assert!(
        plan.blockers[0]
            .to_string()
            .contains("{ip: 192.168.2.165, number: 5}")
    );

    let last = unpinned.replace("      - {ip: 192.168.2.165}\n", "");
    let plan = run(&cluster_from(&last), Some(&before), &converged(&before));
    assert!(plan.blockers.is_empty(), "{plan}");
    let a = actions(&plan);
    assert!(a.iter().any(|x| matches!(
        x,
        Action::RemoveNode {
            number: 5,
            role: Role::Worker,
            ..
        }
    )));
    assert_eq!(plan.count(Effect::Destroy), 1);
}

#[test]
fn foreign_vm_at_a_wanted_vmid_blocks_that_node_only() {
    let c = production();
    let mut observed = ObservedCluster {
        secrets: Some(all_stored()),
        ..Default::default()
    };
    observed.conflicts.push(Conflict {
        vmid: Vmid::new(403).unwrap(),
        name: Some("db-server".into()),
        reason: "not tagged kiln".into(),
    });
    let plan = run(&c, None, &observed);
    assert!(matches!(plan.blockers[0], Blocker::Blocked(_)));
    let created: Vec<u32> = actions(&plan)
        .iter()
        .filter_map(|x| match x {
            Action::CreateVm { number, .. } => Some(*number),
            _ => None,
        })
        .collect();
    assert_eq!(created, vec![1, 2, 4, 5]);
}

#[test]
fn decommission_destroys_kilns_vms_only_and_respects_protection() {
    let c = production();
    let mut observed = converged(&c);
    observed.conflicts.push(Conflict {
        vmid: Vmid::new(406).unwrap(),
        name: None,
        reason: "a human's clone of a kiln VM".into(),
    });
    let protected = decommission(DecommissionInput {
        name: &c.name,
        protected: true,
        observed: &observed,
        destroy_secrets: false,
    });
    assert!(protected.steps.is_empty());
    let plan = decommission(DecommissionInput {
        name: &c.name,
        protected: false,
        observed: &observed,
        destroy_secrets: false,
    });
    let destroyed: Vec<u32> = actions(&plan)
        .iter()
        .filter_map(|x| match x {
            Action::DestroyVm { vmid, .. } => Some(vmid.get()),
            _ => None,
        })
        .collect();
    assert_eq!(destroyed, vec![405, 404, 403, 402, 401]);
    assert_eq!(
        actions(&plan).last(),
        Some(&&Action::RetireSecrets { destroy: false })
    );
    assert_eq!(plan.reports.len(), 1);
}

fn disruptions(plan: &ClusterPlan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| s.action.disruption().to_string())
        .collect()
}

#[test]
fn a_worker_resize_reboots_each_worker_one_at_a_time_and_leaves_control_planes_alone() {
    let before = production();
    let text = production_text().replace(
        "resources: {cores: 4, memoryGiB: 16, diskGiB: 200}",
        "resources: {cores: 8, memoryGiB: 16, diskGiB: 200}",
    );
    let plan = run(&cluster_from(&text), Some(&before), &converged(&before));
    let said = disruptions(&plan);
    let reboots: Vec<&String> = said.iter().filter(|d| d.starts_with("reboots")).collect();
    assert_eq!(reboots.len(), 2, "{plan}");
    assert!(reboots[0].starts_with("reboots production-wk-4 "), "{plan}");
    assert!(reboots[1].starts_with("reboots production-wk-5 "), "{plan}");
    assert!(!said.iter().any(|d| d.contains("-cp-")), "{plan}");
    assert_eq!(plan.disruption().to_string(), "2 reboots, one at a time");
    let shown = plan.to_string();
    assert!(
        shown.contains("  disruption: 2 reboots, one at a time\n"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "  ~ resize VM 404 production-wk-4: cores 4 → 8  (the file asks for other resources)\n      → reboots production-wk-4 through Proxmox"
        ),
        "{shown}"
    );
}

#[test]
fn a_bigger_disk_alone_is_an_online_change() {
    let before = production();
    let text = production_text().replace(
        "resources: {cores: 4, memoryGiB: 16, diskGiB: 200}",
        "resources: {cores: 4, memoryGiB: 16, diskGiB: 300}",
    );
    let plan = run(&cluster_from(&text), Some(&before), &converged(&before));
    assert!(
        disruptions(&plan).contains(
            &"grows the disk of production-wk-4 from 200 to 300 GiB online, no reboot".to_owned()
        ),
        "{plan}"
    );
    assert_eq!(plan.disruption().to_string(), "2 disks grown online");
}

#[test]
fn scaling_control_planes_down_says_which_member_leaves_etcd() {
    let pinned = production_text()
        .replace("{ip: 192.168.2.162}", "{ip: 192.168.2.162, number: 2}")
        .replace(
            "      - {ip: 192.168.2.163}\n",
            "      - {ip: 192.168.2.163, number: 3}\n",
        )
        .replace("{ip: 192.168.2.164}", "{ip: 192.168.2.164, number: 4}");
    let before = cluster_from(&pinned);
    let after = cluster_from(&pinned.replace("      - {ip: 192.168.2.163, number: 3}\n", ""));
    let plan = run(&after, Some(&before), &converged(&before));
    assert!(plan.blockers.is_empty(), "{plan}");
    assert!(
        disruptions(&plan)
            .iter()
            .any(|d| d.starts_with("removes production-cp-3 from etcd")),
        "{plan}"
    );
    assert_eq!(plan.disruption().to_string(), "1 etcd member removed");
}

#[test]
fn a_new_cluster_disrupts_nothing_and_a_decommission_says_no_drain() {
    let c = production();
    let observed = ObservedCluster {
        secrets: Some(SecretsObserved {
            bundle: BundleState::Absent,
            bootstrapped: false,
            kubeconfig_stored: false,
            talosconfig_stored: false,
            decommissioned: false,
            credentials: Default::default(),
        }),
        ..Default::default()
    };
    let plan = run(&c, None, &observed);
    assert!(
        disruptions(&plan).iter().all(|d| d == "no disruption"),
        "{plan}"
    );
    assert!(plan.to_string().contains("  disruption: no disruption\n"));

    let gone = decommission(DecommissionInput {
        name: &c.name,
        protected: false,
        observed: &converged(&c),
        destroy_secrets: false,
    });
    assert_eq!(
        gone.disruption().to_string(),
        "5 VMs destroyed without a drain"
    );
}

#[test]
fn json_keeps_every_field_and_adds_the_disruption() {
    let before = production();
    let text = production_text().replace(
        "resources: {cores: 4, memoryGiB: 16, diskGiB: 200}",
        "resources: {cores: 4, memoryGiB: 32, diskGiB: 200}",
    );
    let plan = run(&cluster_from(&text), Some(&before), &converged(&before));
    let v = serde_json::to_value(&plan).unwrap();
    for key in [
        "cluster",
        "kind",
        "steps",
        "blockers",
        "reports",
        "disruption",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["disruption"]["reboots"], 2, "{v}");
    assert_eq!(v["disruption"]["text"], "2 reboots, one at a time", "{v}");
    let first = &v["steps"][0];
    assert_eq!(first["action"]["action"], "resize-vm", "{v}");
    assert_eq!(first["action"]["vmid"], 404, "{v}");
    assert_eq!(first["reason"], "the file asks for other resources", "{v}");
    assert_eq!(first["disruption"]["kind"], "reboot", "{v}");
    assert_eq!(first["disruption"]["node"], "production-wk-4", "{v}");
    assert_eq!(first["disruption"]["role"], "worker", "{v}");
    assert!(
        first["disruption"]["text"]
            .as_str()
            .unwrap()
            .starts_with("reboots production-wk-4"),
        "{v}"
    );
}

/// A cordon of kiln's left behind (DESIGN §7, crash safety) is lifted once nothing else drains the
/// node; a node a step of this plan reboots keeps it (that step uncordons after); a blocked plan
/// lifts nothing; a node the file no longer names is not kiln's to uncordon.
#[test]
fn a_cordon_kiln_left_is_lifted_unless_a_step_drains_that_node() {
    let c = production();
    let worker = c.node(4).unwrap().name.clone();
    let mut observed = converged(&c);
    observed.cordoned_by_kiln = vec![worker.clone(), "production-wk-9".into()];
    let plan = run(&c, Some(&c), &observed);
    assert_eq!(
        actions(&plan),
        [
            &Action::Uncordon {
                name: worker.clone()
            },
            &Action::WaitHealthy
        ],
        "{plan}"
    );
    assert_eq!(plan.steps[0].action.disruption(), Disruption::None);

    // Its memory is raised: the resize drains and reboots it, then uncordons it itself.
    observed.vms.get_mut(&4).unwrap().memory_mib = Some(1024);
    let plan = run(&c, Some(&c), &observed);
    assert!(
        !actions(&plan)
            .iter()
            .any(|a| matches!(a, Action::Uncordon { .. })),
        "{plan}"
    );

    // Blocked (a disk shrink is refused): nothing is lifted.
    observed.vms.get_mut(&4).unwrap().memory_mib = None;
    observed.vms.get_mut(&4).unwrap().disk_gib = Some(500);
    let plan = run(&c, Some(&c), &observed);
    assert!(!plan.blockers.is_empty(), "{plan}");
    assert!(
        !actions(&plan)
            .iter()
            .any(|a| matches!(a, Action::Uncordon { .. })),
        "{plan}"
    );
}
