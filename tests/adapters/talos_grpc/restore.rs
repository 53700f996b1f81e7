//! Issue 30: `backup::restore` runs Talos's etcd recovery over kiln's Talos port against the
//! simulator: every control plane wiped, the snapshot uploaded to one, etcd back at the snapshot's
//! revision with the others joined, the worker untouched.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln::backup::bbolt::SnapshotCheck;
use kiln::backup::restore::{self, PlanNode, RestorePlan, RestoreStep, RestoreTiming};
use kiln::sim::talos::validate::SchemaValidator;
use kiln::sim::talos::{NodeSpec, SimOptions, SimTalos};
use kiln::talos::grpc::{GrpcTalos, NodeState, TalosPort, upload_from};

use super::{addr, admin, cluster, config_for, ip, options, schema_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_brings_etcd_back_at_the_snapshots_revision_with_every_control_plane() {
    let specs: Vec<NodeSpec> = (171..=174)
        .map(|last| NodeSpec {
            addr: addr(last),
            uuid: None,
            version: None,
            platform: None,
        })
        .collect();
    let sim = SimTalos::start(
        &specs,
        SimOptions {
            dump_dir: None,
            validator: Some(std::sync::Arc::new(SchemaValidator::new(schema_dir()))),
            reboot_delay: Some(Duration::from_millis(200)),
        },
    )
    .await
    .unwrap();
    sim.set_learner_delay(Duration::from_millis(100));
    let c = cluster("restore", 171, 3, 1);
    let talos = GrpcTalos {
        port: 50000,
        options: options(),
    };
    let id = admin();
    for last in 171..=174 {
        talos
            .apply_in_maintenance(ip(last), "", config_for(&c, ip(last)).as_bytes())
            .await
            .unwrap();
    }
    talos.bootstrap(ip(171), &id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while talos
        .etcd_members(ip(171), &id)
        .await
        .map_or(0, |m| m.iter().filter(|m| !m.is_learner).count())
        < 3
    {
        assert!(Instant::now() < deadline, "the control planes did not join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The snapshot, taken from a control plane that is not the one the restore will use.
    let node = talos.connect(ip(172), &id).await.unwrap();
    let mut stream = node.etcd_snapshot().await.unwrap();
    let mut check = SnapshotCheck::new();
    let mut snapshot = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        check.feed(&chunk).unwrap();
        snapshot.extend_from_slice(&chunk);
    }
    let revision = check.finish().unwrap().revision;
    // The cluster carries on writing after the snapshot.
    sim.write_etcd(addr(171), 250);
    let before = sim.etcd_revision(addr(171)).unwrap();
    assert!(before > revision + 200);
    let worker_config = sim.applied_config(addr(174)).unwrap();

    let node_of = |last: u8, name: &str| PlanNode {
        name: name.to_owned(),
        ip: ip(last),
    };
    let plan = RestorePlan::new(
        "restore",
        "snapshot-under-test",
        revision,
        vec![
            node_of(171, "restore-cp-1"),
            node_of(172, "restore-cp-2"),
            node_of(173, "restore-cp-3"),
        ],
        vec![node_of(174, "restore-w-1")],
        None,
    )
    .unwrap();
    let mut seen = Vec::new();
    restore::execute(
        &plan,
        &talos,
        &id,
        upload_from(snapshot),
        RestoreTiming {
            wait: Duration::from_secs(20),
            poll: Duration::from_millis(50),
        },
        &mut |step: &RestoreStep| seen.push(step.clone()),
    )
    .await
    .unwrap();
    assert_eq!(seen, plan.steps());

    // etcd came back at exactly the snapshot's revision, on the receiver alone, then the other
    // control planes joined it; what was written after the snapshot is gone.
    assert_eq!(sim.etcd_recoveries(), [(addr(171), revision)]);
    let now = sim.etcd_revision(addr(171)).unwrap();
    assert!(
        (revision..before).contains(&now),
        "{now}: snapshot {revision}, before {before}"
    );
    let members = talos.etcd_members(ip(171), &id).await.unwrap();
    assert_eq!(members.iter().filter(|m| !m.is_learner).count(), 3);
    // The worker was never reset: same config, still configured.
    assert_eq!(sim.applied_config(addr(174)).unwrap(), worker_config);
    assert!(matches!(
        talos.node_state(ip(174), &id).await,
        NodeState::Configured(_)
    ));
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}
