//! Issue 23's acceptance: a token holding exactly DESIGN.md §3's list provisions and decommissions a
//! cluster through the real binary (fakepve checks every call against PVE's schema permissions), and
//! a token without one of them stops at the preflight naming it, before anything changes.

use crate::checks::{assert_converged, assert_exact_vms};
use crate::fixture::ClusterFixture;
use crate::support::{World, least_privilege_acl};

#[tokio::test]
async fn exactly_the_list_provisions_and_decommissions_a_cluster() {
    let c = ClusterFixture::new("lean", 1, 1);
    let world = World::start(vec![c.clone()]).await;
    let acl: Vec<(String, Vec<&str>)> = least_privilege_acl()
        .into_iter()
        .map(|(path, mut privs)| {
            privs.sort();
            (path, privs)
        })
        .collect();
    let acl = serde_json::to_value(acl).unwrap();
    assert_eq!(
        world
            .pve
            .ctl(serde_json::json!({"cmd": "acl_of", "user": crate::pve::TOKEN_ID})),
        acl,
        "the world's token holds exactly the list"
    );

    let run = world.run_once();
    assert!(
        run.success(),
        "provisioning with the least-privilege token:\n{run}"
    );
    assert_converged(&world, &c).await;
    assert_exact_vms(&world, &[&c], &[]);

    // The last cluster goes: only with allow_empty (DESIGN.md §7).
    world.write_config(true);
    world.delete_clusters(&[&c.name]);
    let run = world.run_once();
    assert!(
        run.success(),
        "decommissioning with the least-privilege token:\n{run}"
    );
    assert_exact_vms(&world, &[], &[]);
}

#[tokio::test]
async fn a_token_missing_a_privilege_stops_at_the_preflight_naming_it() {
    let c = ClusterFixture::new("short", 1, 0);
    let world = World::start(vec![c.clone()]).await;
    let mut acl = least_privilege_acl();
    let vms = acl.iter_mut().find(|(p, _)| p == "/vms").unwrap();
    vms.1.retain(|p| *p != "VM.Config.Cloudinit");
    world.pve.set_acl(&acl);
    let mark = world.request_mark();
    let run = world.run_once();
    assert!(
        !run.success(),
        "a run without VM.Config.Cloudinit succeeded:\n{run}"
    );
    for vmid in c.vmids() {
        assert!(
            run.stderr
                .contains(&format!("VM.Config.Cloudinit on /vms/{vmid}")),
            "the preflight does not name VM.Config.Cloudinit on /vms/{vmid}:\n{run}"
        );
    }
    assert!(
        world.writes_since(mark).is_empty(),
        "something changed before the preflight's verdict"
    );
    assert_exact_vms(&world, &[], &[]);
}
