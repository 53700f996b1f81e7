//! The cheap look's verdict (reusing the planner's rules, disk included) and which nodes a deep look
//! may contact.

use super::*;
use crate::plan::tests::owned;
use crate::spec::ClusterDocument;

fn production() -> Cluster {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/clusters/production.yaml"
    ))
    .expect("example file");
    let doc: ClusterDocument = serde_yaml::from_str(&text).expect("valid example");
    Cluster::expand(&doc).expect("expands")
}

fn as_asked(c: &Cluster) -> ObservedCluster {
    ObservedCluster {
        vms: c.nodes.iter().map(|n| (n.number, owned(n))).collect(),
        ..ObservedCluster::default()
    }
}

/// A change to one observed VM, by hand.
type Change = fn(&mut ObservedVm);

#[test]
fn the_listing_vouches_only_for_vms_exactly_as_asked() {
    let c = production();
    assert!(matches_intent(&as_asked(&c), &c));
    let first = c.nodes[0].number;
    let changes: [(&str, Change); 8] = [
        // The planner grows a disk smaller than asked: a cheap look must not skip it.
        ("smaller disk", |vm| {
            vm.disk_gib = vm.disk_gib.map(|d| d - 1)
        }),
        ("larger disk", |vm| vm.disk_gib = vm.disk_gib.map(|d| d + 1)),
        ("cores", |vm| vm.cores = vm.cores.map(|c| c + 1)),
        ("memory", |vm| {
            vm.memory_mib = vm.memory_mib.map(|m| m + 1024)
        }),
        ("lock", |vm| vm.lock = Some("backup".into())),
        ("stopped", |vm| vm.power = Power::Stopped),
        ("paused", |vm| vm.power = Power::Unknown),
        ("half-made", |vm| vm.ownership = Ownership::HalfMade),
    ];
    for (what, change) in changes {
        let mut observed = as_asked(&c);
        change(observed.vms.get_mut(&first).unwrap());
        assert!(!matches_intent(&observed, &c), "{what} passed as matching");
    }
    let mut missing = as_asked(&c);
    missing.vms.remove(&first);
    assert!(!matches_intent(&missing, &c));
    let mut conflict = as_asked(&c);
    conflict.conflicts.push(Conflict {
        vmid: c.nodes[0].vmid,
        name: Some("someone-else".into()),
        reason: "no kiln tags".into(),
    });
    assert!(!matches_intent(&conflict, &c));
}

#[test]
fn a_deep_look_asks_talos_only_on_kilns_running_vms() {
    let c = production();
    let mut observed = as_asked(&c);
    let numbers: Vec<u32> = c.nodes.iter().map(|n| n.number).collect();
    assert!(
        numbers.len() >= 3,
        "the example has too few nodes for this test"
    );
    observed.vms.get_mut(&numbers[0]).unwrap().ownership = Ownership::HalfMade;
    observed.vms.get_mut(&numbers[1]).unwrap().power = Power::Stopped;
    observed.vms.remove(&numbers[2]);
    let asked: Vec<u32> = talos_candidates(&observed, &c)
        .iter()
        .map(|n| n.number)
        .collect();
    assert_eq!(asked, numbers[3..].to_vec());
}
