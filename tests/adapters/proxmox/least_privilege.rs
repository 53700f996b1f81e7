//! Issue 23, point 7: the preflight asks PVE per concrete path and names exactly what is missing; a
//! token holding exactly DESIGN.md §3's list works on a default datacenter (no `user-tag-access`).

use kiln::proxmox::preflight::WantedVm;
use kiln::proxmox::{PreflightScope, ProxmoxError, ProxmoxPort, VmSpec};
use kiln::spec::Role;
use serde_json::json;

use super::spec;
use super::support::{FakePve, least_privilege};

/// VM 401 on `vmbr1` VLAN 20, cloned from template 9000, whose own NIC is on `vmbr0`: two SDN paths
/// that do not contain each other, so each grant of the list is needed on its own.
fn vm401() -> VmSpec {
    let mut s = spec(1, Role::ControlPlane);
    s.bridge = "vmbr1".into();
    s
}

fn scope(specs: &[&VmSpec]) -> PreflightScope {
    PreflightScope {
        vms: specs
            .iter()
            .map(|s| WantedVm {
                vmid: s.id.vmid.get(),
                template: s.template.get(),
                storage: s.storage.clone(),
                bridge: s.bridge.clone(),
                vlan: s.vlan,
                pool: s.pool.clone(),
                tags: s.id.tag_set(),
            })
            .collect(),
    }
}

fn exact_list() -> Vec<(String, Vec<&'static str>)> {
    least_privilege(
        9000,
        "/vms/401",
        "local-lvm",
        &[
            "/sdn/zones/localnetwork/vmbr1/20",
            "/sdn/zones/localnetwork/vmbr0",
        ],
    )
}

fn missing(err: ProxmoxError) -> Vec<String> {
    match err {
        ProxmoxError::MissingPrivileges(m) => m,
        other => panic!("not a missing-privileges error: {other}"),
    }
}

#[tokio::test]
async fn exactly_the_list_passes_and_provisions_and_destroys() {
    let pve = FakePve::start();
    pve.set_acl(&exact_list());
    let px = pve.adapter();
    let s = vm401();
    px.preflight(&scope(&[&s]))
        .await
        .expect("the list suffices");
    // Asked per concrete path, the tag policy read (Sys.Audit held), the template's NICs read.
    let asked: Vec<_> = pve
        .requests()
        .into_iter()
        .filter(|(_, p)| p.ends_with("/access/permissions"))
        .collect();
    assert_eq!(
        asked.len(),
        6,
        "/, /vms/401, /vms/9000, storage, two SDN paths"
    );
    assert!(
        pve.requests()
            .iter()
            .any(|(m, p)| m == "GET" && p.ends_with("/cluster/options"))
    );
    let created = px.create(&s, "pve1").await.expect("create with the list");
    assert!(created.vm.running());
    px.destroy(created.vm).await.expect("destroy with the list");
    assert!(pve.vm(401).is_null());
}

#[tokio::test]
async fn removing_any_privilege_of_the_list_names_it_and_its_path() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = vm401();
    let sc = scope(&[&s]);
    let list = exact_list();
    let mut checked = 0;
    for (i, (path, privs)) in list.iter().enumerate() {
        for gone in privs {
            let mut acl = list.clone();
            acl[i].1.retain(|p| p != gone);
            pve.set_acl(&acl);
            let m = missing(px.preflight(&sc).await.unwrap_err());
            assert_eq!(
                m,
                vec![format!("{gone} on {path}")],
                "without {gone} on {path}"
            );
            checked += 1;
        }
    }
    // 1 + 2 + 10 + 1 + 2: every privilege of DESIGN.md §3's list but the conditional Sys.Modify.
    assert_eq!(checked, 16);
    let err = {
        pve.set_acl(&[]);
        px.preflight(&sc).await.unwrap_err()
    };
    // Nothing held: the template's NICs cannot be read either; VM.Audit on it is what is named.
    for want in [
        "Sys.Audit on /",
        "VM.Allocate on /vms/401",
        "VM.Audit on /vms/9000",
        "SDN.Use on /sdn/zones/localnetwork/vmbr1/20",
    ] {
        assert!(err.to_string().contains(want), "{want} not in {err}");
    }
    assert!(
        !err.to_string().contains("Sys.Modify"),
        "without Sys.Audit the tag policy is unknown; Sys.Modify is not claimed: {err}"
    );
}

#[tokio::test]
async fn sys_modify_is_asked_only_when_the_tag_policy_needs_it() {
    let pve = FakePve::start();
    pve.set_acl(&exact_list());
    let px = pve.adapter();
    let sc = scope(&[&vm401()]);
    px.preflight(&sc).await.expect("a default datacenter: free");
    for options in [
        json!({"user-tag-access": {"user-allow": "list", "user-allow-list": ["kiln"]}}),
        json!({"user-tag-access": {"user-allow": "none"}}),
        json!({"registered-tags": ["kiln-cluster-prod"]}),
    ] {
        pve.ctl(json!({"cmd": "datacenter_options", "options": options}));
        let m = missing(px.preflight(&sc).await.unwrap_err());
        assert_eq!(m, vec!["Sys.Modify on /".to_owned()], "{options}");
    }
    pve.ctl(json!({"cmd": "datacenter_options",
                   "options": {"user-tag-access": {"user-allow": "free"}, "registered-tags": ["other"]}}));
    px.preflight(&sc)
        .await
        .expect("free, and none of kiln's tags registered");
    pve.ctl(json!({"cmd": "datacenter_options",
                   "options": {"user-tag-access": {"user-allow": "existing"}}}));
    let mut acl = exact_list();
    acl[0].1.push("Sys.Modify");
    pve.set_acl(&acl);
    px.preflight(&sc).await.expect("Sys.Modify held");
}

#[tokio::test]
async fn a_pool_grant_holds_the_vm_privileges() {
    let pve = FakePve::start();
    let mut s = vm401();
    s.pool = Some("kiln".into());
    let mut acl = exact_list();
    acl[2].0 = "/pool/kiln".into();
    pve.set_acl(&acl);
    pve.adapter()
        .preflight(&scope(&[&s]))
        .await
        .expect("VM privileges held on the pool the clone joins");
}

#[tokio::test]
async fn a_start_with_nothing_to_make_costs_two_requests() {
    let pve = FakePve::start();
    let px = pve.adapter();
    let s = vm401();
    px.create(&s, "pve1").await.unwrap();
    pve.set_acl(&exact_list());
    pve.ctl(json!({"cmd": "clear_requests"}));
    px.preflight(&scope(&[&s])).await.unwrap();
    let inv = px.observe().await.unwrap();
    assert!(inv.get(401).is_some());
    let paths: Vec<String> = pve.requests().into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        vec![
            "/api2/json/cluster/resources".to_owned(),
            "/api2/json/access/permissions".to_owned()
        ],
        "the preflight's listing serves the first observation"
    );
    px.observe().await.unwrap();
    assert_eq!(pve.requests().len(), 3, "later observations list again");
}
