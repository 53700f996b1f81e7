//! The scale bench's fleet (benches/scale/fixture.rs) stays what its figures claim, without running
//! the bench: 1,000 valid 3+2 clusters, and VMs that kiln's own ownership rules and planner take as
//! converged — so a "no-op" figure can never quietly measure a cycle that does work.

#[path = "../../benches/scale/fixture.rs"]
mod scale_fixture;

use std::path::Path;

use kiln::plan::{self, ConvergeInput, DriftPolicy};
use kiln::proxmox::Inventory;
use kiln::proxmox::ownership::{Verdict, VmIdentity, judge};
use kiln::reconcile::observe;
use scale_fixture::Net;

fn uid(c: &kiln::spec::Cluster) -> String {
    format!("0b7c3a52-5d0e-4a8e-9f3b-{:012}", c.spec.proxmox.vmid_prefix)
}

#[test]
fn the_scale_fleet_is_valid_and_its_vms_leave_nothing_to_do() {
    let files = scale_fixture::files(1_000, Net::Private);
    let outcome = kiln::spec::load(
        files
            .iter()
            .map(|(p, t)| (Path::new(p.as_str()), t.as_str())),
    );
    assert!(outcome.invalid.is_empty(), "{:?}", outcome.invalid.first());
    assert!(
        outcome.warnings.is_empty(),
        "{:?}",
        outcome.warnings.first()
    );
    assert_eq!(outcome.clusters.len(), 1_000);

    let inventory =
        Inventory::from_listing_json(&scale_fixture::listing_json(&outcome.clusters, uid)).unwrap();
    assert_eq!(inventory.len(), 5_000);
    for cluster in &outcome.clusters {
        assert_eq!(cluster.nodes.len(), 5, "3 control planes + 2 workers");
        let seen = observe::listing(&inventory, cluster);
        assert!(
            observe::matches_intent(&seen.observed, cluster),
            "{}",
            cluster.name
        );
        let p = plan::converge(ConvergeInput {
            desired: cluster,
            previous: Some(cluster),
            observed: &seen.observed,
            drift_policy: DriftPolicy::Repair,
            intent_changed: false,
        });
        assert!(
            p.steps.is_empty() && p.blockers.is_empty(),
            "{}: {p:?}",
            cluster.name
        );
    }

    // The VMs put into fakepve pass kiln's ownership rules as kiln's own, node by node.
    for cluster in outcome.clusters.iter().step_by(97) {
        let vms = scale_fixture::launcher_vms(cluster, &uid(cluster));
        for (node, vm) in cluster.nodes.iter().zip(&vms) {
            let id = VmIdentity::for_node(cluster, node, &uid(cluster));
            let config = vm["config"].as_object().unwrap();
            assert_eq!(judge(&id, config), Verdict::Owned, "{}", node.name);
            assert_eq!(vm["status"], "running");
        }
    }
}

#[test]
fn the_loopback_fleet_of_the_provisioning_bench_is_valid() {
    let files = scale_fixture::files(10, Net::Loopback { first_block: 16 });
    let outcome = kiln::spec::load(
        files
            .iter()
            .map(|(p, t)| (Path::new(p.as_str()), t.as_str())),
    );
    assert!(outcome.invalid.is_empty(), "{:?}", outcome.invalid.first());
    assert_eq!(outcome.clusters.len(), 10);
    for c in &outcome.clusters {
        assert!(c.nodes.iter().all(|n| n.ip.is_loopback()), "{}", c.name);
    }
}
