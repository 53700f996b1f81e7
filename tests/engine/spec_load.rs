//! The loader's contract with the reconciler, through the library.

use std::path::Path;

use kiln::spec::{Role, load};

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/clusters/{name}.yaml")),
    )
    .unwrap()
}

#[test]
fn production_expands_as_the_established_pattern() {
    let text = example("production");
    let out = load([(Path::new("clusters/production.yaml"), text.as_str())]);
    assert!(out.is_valid(), "{:?}", out.invalid);
    let c = &out.clusters[0];
    let got: Vec<(u32, Role, String, u32, String)> = c
        .nodes
        .iter()
        .map(|n| {
            (
                n.number,
                n.role,
                n.name.clone(),
                n.vmid.get(),
                n.ip.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                Role::ControlPlane,
                "production-cp-1".into(),
                401,
                "192.168.2.161".into()
            ),
            (
                2,
                Role::ControlPlane,
                "production-cp-2".into(),
                402,
                "192.168.2.162".into()
            ),
            (
                3,
                Role::ControlPlane,
                "production-cp-3".into(),
                403,
                "192.168.2.163".into()
            ),
            (
                4,
                Role::Worker,
                "production-wk-4".into(),
                404,
                "192.168.2.164".into()
            ),
            (
                5,
                Role::Worker,
                "production-wk-5".into(),
                405,
                "192.168.2.165".into()
            ),
        ]
    );
    assert_eq!(c.nodes[0].mac.to_string(), "BC:24:11:00:00:01");
    assert_eq!(
        c.nodes[1].mac.0[0], 0x02,
        "derived MACs are locally administered"
    );
    assert_eq!(c.spec.talos.install_disk, "/dev/sda");
}

#[test]
fn a_broken_file_is_unknown_under_its_stem_and_the_others_load() {
    let prod = example("production");
    let staging = example("staging").replace("vip: 192.168.2.170", "vip: [oops");
    let out = load([
        (Path::new("clusters/production.yaml"), prod.as_str()),
        (Path::new("clusters/staging.yaml"), staging.as_str()),
    ]);
    assert_eq!(out.clusters.len(), 1);
    assert_eq!(out.clusters[0].name.as_str(), "production");
    assert_eq!(out.invalid.len(), 1);
    assert_eq!(out.invalid[0].stem, "staging");
    assert!(!out.invalid[0].diagnostics.is_empty());
}

#[test]
fn a_cross_file_collision_invalidates_both_files() {
    let prod = example("production");
    // A copy of staging whose control plane takes production's VMID prefix.
    let staging = example("staging").replace("vmidPrefix: 41", "vmidPrefix: 40");
    let out = load([
        (Path::new("clusters/production.yaml"), prod.as_str()),
        (Path::new("clusters/staging.yaml"), staging.as_str()),
    ]);
    assert!(out.clusters.is_empty(), "neither cluster may be chosen");
    let stems: Vec<&str> = out.invalid.iter().map(|f| f.stem.as_str()).collect();
    assert_eq!(stems, ["production", "staging"]);
    for f in &out.invalid {
        assert!(
            f.diagnostics.iter().any(|d| d.message.contains("VMID 401")),
            "{:?}",
            f.diagnostics
        );
    }
}

#[test]
fn every_error_of_a_file_is_reported_not_just_the_first() {
    let text = example("staging")
        .replace("vip: 192.168.2.170", "vip: 192.168.2.171")
        .replace("{ip: 192.168.2.173}", "{ip: 10.0.0.1, bogus: 1}")
        .replace("cores: 2, memoryGiB: 4", "cores: x, memoryGiB: 4");
    let out = load([(Path::new("staging.yaml"), text.as_str())]);
    let paths: Vec<&str> = out.invalid[0]
        .diagnostics
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    // Structural errors stop before the semantic rules (which need typed values): both of them.
    assert!(paths.contains(&"spec.workers.nodes[1].bogus"), "{paths:?}");
    assert!(
        paths.contains(&"spec.controlPlane.resources.cores"),
        "{paths:?}"
    );
}

/// A fleet large enough to be checked on several threads: order is kept and a collision between
/// two files far apart is still found.
#[test]
fn a_large_fleet_keeps_its_order_and_its_cross_file_rules() {
    let intent = |i: usize, prefix: usize| {
        example("staging")
            .replace("name: staging", &format!("name: s{i:03}"))
            .replace("vmidPrefix: 41", &format!("vmidPrefix: {prefix}"))
            .replace("192.168.2.", &format!("10.{}.{}.", i / 200, i % 200))
    };
    let mut files: Vec<(String, String)> = (0..150)
        .map(|i| (format!("clusters/s{i:03}.yaml"), intent(i, 1000 + i)))
        .collect();
    let out = load(
        files
            .iter()
            .map(|(p, t)| (Path::new(p.as_str()), t.as_str())),
    );
    assert!(out.is_valid(), "{:?}", out.invalid.first());
    let names: Vec<String> = out.clusters.iter().map(|c| c.name.to_string()).collect();
    let expected: Vec<String> = (0..150).map(|i| format!("s{i:03}")).collect();
    assert_eq!(names, expected);

    files[140].1 = intent(140, 1003); // takes s003's VMIDs
    let out = load(
        files
            .iter()
            .map(|(p, t)| (Path::new(p.as_str()), t.as_str())),
    );
    let stems: Vec<&str> = out.invalid.iter().map(|f| f.stem.as_str()).collect();
    assert_eq!(stems, ["s003", "s140"]);
    assert_eq!(out.clusters.len(), 148);
}
