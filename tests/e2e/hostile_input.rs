//! Issue 24 points 6, 7 and 9 through the daemon: hostile files in the repository are refused one by
//! one, and the rest of the fleet goes on. Run with `decommission_grace = "0s"` and `allow_empty =
//! true`, so that nothing but kiln's rules on unknown files stands between a bad file and a destroy.

use std::ffi::OsString;
use std::time::Duration;

use crate::checks::{assert_exact_vms, status_of};
use crate::fixture::ClusterFixture;
use crate::measure::{alias_bomb, measured_command, read_measured};
use crate::support::World;

const MIB: u64 = 1024;

#[tokio::test]
async fn an_alias_bomb_next_to_a_valid_cluster_is_refused_and_the_cluster_is_untouched() {
    let keep = ClusterFixture::new("keep", 1, 0);
    let world = World::start(vec![keep.clone()]).await;
    world.write_config(true);
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");

    // Point 9: the simulator's dumped machine configs hold the cluster's keys.
    let dumps: Vec<_> = std::fs::read_dir(&world.sim.dump_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!dumps.is_empty(), "the simulator dumped no config");
    for dump in &dumps {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dump).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", dump.display());
    }

    let commits = world.kiln_commits();
    let vault = world.vault_snapshot().await;
    let vms = world.vms();
    world.push_file(
        "clusters/bomb.yaml",
        &alias_bomb("bomb", 100 * 1024),
        "a bomb",
    );

    let result = world.dir.path().join("bomb-run.json");
    let args: Vec<OsString> = vec![
        "run".into(),
        "--once".into(),
        "--config".into(),
        world.config.clone().into(),
        "--timeout".into(),
        "20s".into(),
    ];
    let mut cmd = measured_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_kiln")),
        &args,
        &result,
        1024 * MIB,
        Duration::from_secs(60),
    );
    cmd.env_remove("KILN_TEST_PAUSE_AT");
    let mark = world.request_mark();
    let run = world.run_command(cmd);
    let m = read_measured(&result);
    eprintln!("kiln run --once beside the bomb: {m:?}");
    assert_eq!(m.killed, None, "{m:?}\n{run}");
    assert!(
        m.max_rss_kib < 100 * MIB,
        "kiln peaked at {} KiB while refusing the bomb\n{run}",
        m.max_rss_kib
    );
    // The parent's own exit code says nothing; kiln's is in `m`.
    assert_eq!(m.code, 1, "a Blocked file is not converged:\n{run}");
    assert!(
        run.stdout.contains("clusters/bomb.yaml") && run.stdout.contains("10000"),
        "the run should name the file and the limit:\n{run}"
    );

    assert_eq!(world.writes_since(mark), Vec::<(String, String)>::new());
    assert_eq!(world.vms(), vms, "the VMs changed");
    assert_exact_vms(&world, &[&keep], &[]);
    assert_eq!(world.vault_snapshot().await, vault, "kiln wrote to Vault");
    assert_eq!(world.kiln_commits(), commits, "kiln committed");

    let (out, json) = world.status_json(None);
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let bomb = status_of(&json, "bomb").unwrap_or_else(|| panic!("no bomb in {json}"));
    let said = bomb.to_string();
    assert!(
        said.contains("clusters/bomb.yaml") && said.contains("10000"),
        "the status should name the file and the limit: {bomb}"
    );
    let kept = status_of(&json, &keep.name).unwrap();
    assert_eq!(kept["phase"], "Ready", "{kept}");
}

#[tokio::test]
async fn a_template_override_that_never_ends_is_reported_naming_it_and_nothing_is_committed() {
    let c = ClusterFixture::new("endless", 1, 0);
    let world = World::start(vec![c.clone()]).await;
    world.write_config(true);
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    let commits = world.kiln_commits();

    // 10^15 iterations and no output (a regression must not eat the machine's memory): without
    // fuel the render never returns.
    let endless = "{% for a in range(100000) %}{% for b in range(100000) %}\
                   {% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}\n";
    world.push_file("templates/cluster-facts.yaml.j2", endless, "an override");
    let run = world.run_once_for(Duration::from_secs(20));
    assert!(
        !run.success(),
        "a run that could not publish its generated files has not converged:\n{run}"
    );
    assert!(
        run.stdout.contains("cluster-facts.yaml.j2"),
        "the run should name the template:\n{run}"
    );
    assert_eq!(world.kiln_commits(), commits, "kiln committed:\n{run}");
    let files = world.gitops_files();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with(&format!("{}/facts.yaml", c.name))),
        "the last good output is gone: {files:?}"
    );

    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("kiln status printed no JSON:\n{out}"));
    let record = status_of(&json, &c.name).unwrap_or_else(|| panic!("no {} in {json}", c.name));
    assert!(
        record.to_string().contains("cluster-facts.yaml.j2"),
        "the status should name the template: {record}\n{run}"
    );
}
