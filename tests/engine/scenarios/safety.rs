//! DESIGN.md §7 "Safety before any destructive step" and "Decommission", one rule per test.

use std::time::{Duration, Instant};

use kiln::reconcile::status::Phase;

use super::{Settings, Site, assert_phase, settle};
use crate::fixture::ClusterFixture;

/// A file that exists but does not parse is unknown, never deleted: its cluster keeps every VM and its
/// generated files, it is Blocked with the reason, and a cluster added in the same commit still comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_never_deletes_its_cluster_nor_stops_the_others() {
    let broken = ClusterFixture::new("sbroken", 1, 0);
    let added = ClusterFixture::new("sadded", 1, 0);
    let site = Site::new(&[&broken]);
    let mut engine = site.engine(Settings::default()).await;
    settle(&mut engine, "first apply").await;
    site.assert_exactly(&broken).await;
    let files = site.generated_files_of(&broken.name);
    assert!(!files.is_empty(), "nothing generated for {}", broken.name);

    site.push("break one file, add a cluster", |r| {
        r.write(
            &broken.path(),
            "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata: [\n",
        );
        r.write(&added.path(), &added.yaml());
    });
    settle(&mut engine, "an invalid file beside a new one").await;
    let status = assert_phase(&engine, &broken.name, Phase::Blocked);
    assert!(status.contains("is invalid"), "{status}");
    site.assert_exactly(&broken).await;
    assert_eq!(
        site.generated_files_of(&broken.name),
        files,
        "the unknown cluster's generated files were touched"
    );
    assert_phase(&engine, &added.name, Phase::Ready);
    site.assert_exactly(&added).await;
}

/// A deleted file starts the grace period: nothing is destroyed before it ends, and the cluster is
/// decommissioned once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_waits_out_the_grace_period() {
    let c = ClusterFixture::new("sgrace", 1, 0);
    // A second cluster keeps the folder from being empty (that rule has a test of its own).
    let keep = ClusterFixture::new("sgracekeep", 1, 0);
    let site = Site::new(&[&c, &keep]);
    let grace = Duration::from_secs(4);
    let settings = Settings {
        grace,
        ..Settings::default()
    };
    let mut engine = site.engine(settings).await;
    settle(&mut engine, "first apply").await;

    site.push("delete the cluster", |r| {
        std::fs::remove_file(r.work.join(c.path())).unwrap();
    });
    let deleted = Instant::now();
    engine.cycle().await;
    assert!(
        deleted.elapsed() < grace,
        "one cycle took {:?}, longer than the grace this test relies on",
        deleted.elapsed()
    );
    let status = assert_phase(&engine, &c.name, Phase::Deleting);
    assert!(status.contains("decommission starts at"), "{status}");
    site.assert_exactly(&c).await;
    assert!(!site.generated_files_of(&c.name).is_empty());

    settle(&mut engine, "after the grace period").await;
    assert!(
        deleted.elapsed() >= grace,
        "decommissioned {:?} after the file went, before the {grace:?} grace",
        deleted.elapsed()
    );
    assert!(site.vms_of(&c.name).await.is_empty());
    assert!(site.generated_files_of(&c.name).is_empty());
    assert!(!engine.status().clusters.contains_key(&c.name));
    site.assert_exactly(&keep).await;
}

/// `deletionProtection: true` refuses the removal: Blocked with the reason, nothing destroyed, the
/// generated files kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_protection_refuses_the_removal() {
    let c = ClusterFixture::new("sprotected", 1, 0).protected();
    let other = ClusterFixture::new("sother", 1, 0);
    let site = Site::new(&[&c, &other]);
    let mut engine = site.engine(Settings::default()).await;
    settle(&mut engine, "first apply").await;
    let files = site.generated_files_of(&c.name);

    site.push("delete the protected cluster", |r| {
        std::fs::remove_file(r.work.join(c.path())).unwrap();
    });
    settle(&mut engine, "a protected cluster's file deleted").await;
    let status = assert_phase(&engine, &c.name, Phase::Blocked);
    assert!(status.contains("deletionProtection"), "{status}");
    site.assert_exactly(&c).await;
    assert_eq!(site.generated_files_of(&c.name), files);
    assert_eq!(site.secret_version(&c.name, "secrets").await, Some(1));
    assert_phase(&engine, &other.name, Phase::Ready);
}

/// A clusters folder with no file left, while kiln manages clusters, is taken for a mistake: nothing
/// is destroyed until `allow_empty = true` says the fleet really goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_clusters_folder_is_not_a_mass_deletion_without_allow_empty() {
    let a = ClusterFixture::new("semptya", 1, 0);
    let b = ClusterFixture::new("semptyb", 1, 0);
    let site = Site::new(&[&a, &b]);
    let mut engine = site.engine(Settings::default()).await;
    settle(&mut engine, "first apply").await;

    site.push("delete every cluster", |r| {
        std::fs::remove_dir_all(r.work.join("clusters")).unwrap();
    });
    settle(&mut engine, "an empty clusters folder").await;
    for c in [&a, &b] {
        let status = assert_phase(&engine, &c.name, Phase::Blocked);
        assert!(status.contains("allow_empty"), "{status}");
        site.assert_exactly(c).await;
        assert!(!site.generated_files_of(&c.name).is_empty());
    }
    drop(engine);

    // The operator confirms: the same state, restarted with allow_empty.
    let mut engine = site
        .engine(Settings {
            allow_empty: true,
            ..Settings::default()
        })
        .await;
    settle(&mut engine, "an empty folder with allow_empty").await;
    assert!(
        site.all_vms().await.is_empty(),
        "{:?}",
        site.all_vms().await
    );
    assert!(
        engine.status().clusters.is_empty(),
        "{:#?}",
        engine.status()
    );
}

/// The removal of a cluster's generated files is pushed before any of its VMs is destroyed: while the
/// remote refuses kiln's push, the decommission waits, and the files go first once it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_files_are_published_before_any_vm_is_destroyed() {
    let c = ClusterFixture::new("spublish", 1, 0);
    let keep = ClusterFixture::new("skeep", 1, 0);
    let site = Site::new(&[&c, &keep]);
    let mut engine = site.engine(Settings::default()).await;
    settle(&mut engine, "first apply").await;

    site.push("delete one cluster", |r| {
        std::fs::remove_file(r.work.join(c.path())).unwrap();
    });
    site.refuse_pushes(true);
    for _ in 0..3 {
        engine.cycle().await;
    }
    let status = assert_phase(&engine, &c.name, Phase::Deleting);
    assert!(
        status.contains("removal of its files is pushed"),
        "{status}"
    );
    site.assert_exactly(&c).await;
    assert!(!site.generated_files_of(&c.name).is_empty());

    site.refuse_pushes(false);
    settle(&mut engine, "the remote accepts the removal").await;
    assert!(site.generated_files_of(&c.name).is_empty());
    assert!(site.vms_of(&c.name).await.is_empty());
    site.assert_exactly(&keep).await;
}
