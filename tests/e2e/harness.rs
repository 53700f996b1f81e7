//! The harness checks itself: the world comes up and each part answers, through the same settings the
//! reconciler will read from kiln.toml. It passes without the reconcile engine, so when an acceptance
//! test fails, the world is known good.

use kiln::proxmox::Api;
use kiln::secrets::{SecretStore, VaultSettings, VaultStore};
use kiln::talos::grpc::state::machine_status;
use kiln::talos::grpc::{ClientOptions, MachineStage, TalosClient};

use crate::fixture::{ClusterFixture, derived_mac};
use crate::gitrepo::git;
use crate::support::World;

#[tokio::test]
async fn the_world_comes_up_and_each_part_answers() {
    let c = ClusterFixture::new("harness", 3, 2);
    let world = World::start(vec![c.clone()]).await;
    let config = kiln::config::Config::load(&world.config).unwrap();

    // Proxmox, with kiln.toml's URL, token file and CA file: the template is there, with the cloud-init
    // drive a clone needs, and nothing else.
    let api = Api::from_config(&config.proxmox).expect("proxmox settings");
    let listing = api
        .get("/cluster/resources", &[("type", "vm".to_owned())])
        .await
        .expect("listing through kiln's client");
    let vmids: Vec<u64> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["vmid"].as_u64())
        .collect();
    assert_eq!(vmids, vec![9000], "{listing}");
    let template = world.pve.vm(9000);
    assert!(
        template["config"]["ide2"]
            .as_str()
            .is_some_and(|d| d.contains("cloudinit")),
        "template 9000 lacks its cloud-init drive: {template}"
    );

    // Vault, with kiln.toml's address, token file and mount: a KV v2 mount kiln accepts, still empty.
    let store = VaultStore::new(VaultSettings::from_config(&config.secrets).unwrap()).unwrap();
    store.check().await.expect("kiln accepts the admin mount");
    assert!(world.vault_snapshot().await.values().all(Option::is_none));

    // Git: the remote kiln.toml names holds the validated cluster file; kiln has not committed yet.
    let url = config.git.url.clone();
    assert!(url.starts_with("file:///"), "{url}");
    let listed = git(
        world.repos.tmp.path(),
        &["ls-remote", &url, "refs/heads/main"],
    );
    assert!(listed.ends_with("refs/heads/main"), "{listed}");
    let files = git(&world.repos.bare, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.lines().any(|l| l == c.path()), "{files}");
    assert!(world.kiln_commits().is_empty());
    assert!(world.gitops_files().is_empty());

    // Talos: every node answers at its own IP on :50000, over real gRPC and TLS, in maintenance mode.
    for w in c.wanted() {
        let client = TalosClient::connect_insecure((w.ip, 50000).into(), ClientOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{} at {}: {e}", w.name, w.ip));
        let status = machine_status(&client).await.unwrap();
        assert_eq!(status.stage, MachineStage::Maintenance, "{}", w.name);
        assert!(world.sim.dumped_config(w.ip).is_none());
    }
    assert_eq!(world.sim.bootstraps(), 0);
    assert!(world.sim.violations().is_empty());

    // The fixture follows the naming pattern of DESIGN.md §2.
    let names: Vec<String> = c.wanted().iter().map(|w| w.name.clone()).collect();
    assert_eq!(
        names,
        [
            "harness-cp-1",
            "harness-cp-2",
            "harness-cp-3",
            "harness-wk-4",
            "harness-wk-5"
        ]
    );
    let prefix = c.vmid_prefix();
    assert_eq!(
        c.vmids(),
        (1..=5)
            .map(|n| format!("{prefix}{n}").parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(derived_mac("harness", 1).starts_with("02:"));
    assert_ne!(derived_mac("harness", 1), derived_mac("harness", 2));
}
