//! Issue 26: the two upgrade APIs through kiln's client against the simulator, by the version the node
//! runs (TALOS-FACTS §8): `ImageService`/`LifecycleService` only from v1.13.0 (`Unimplemented` below,
//! as Talos registers them), a Lifecycle upgrade staged until `Reboot`, the legacy Upgrade rebooting
//! by itself, and a config applied to a configured node never changing the version it runs.

use std::time::{Duration, Instant};

use kiln::sim::talos::NodeSpec;
use kiln::spec::Version;
use kiln::talos::grpc::proto::machine::ApplyMode;
use kiln::talos::grpc::{TalosClient, TalosError, TalosPort};

use super::{addr, admin, bundle, cluster, ip, options, port, start_sim};

fn pinned(last: u8, version: &str) -> NodeSpec {
    NodeSpec {
        addr: addr(last),
        uuid: None,
        version: Some(version.to_owned()),
        platform: None,
    }
}

/// The config of the cluster's only node for Talos `version` (its contract and installer).
fn config(c: &kiln::spec::Cluster, version: &str) -> String {
    kiln::talos::config::render(
        c,
        &c.nodes[0],
        bundle(),
        version.parse::<Version>().unwrap(),
    )
    .unwrap()
}

async fn client(last: u8) -> TalosClient {
    TalosClient::connect_mtls(addr(last), &admin(), options())
        .await
        .unwrap()
}

/// Until the node answers over mTLS again after a reboot; its tag then.
async fn back(last: u8) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = TalosClient::connect_mtls(addr(last), &admin(), options()).await
            && let Ok(v) = c.version().await
        {
            return v.tag;
        }
        assert!(
            Instant::now() < deadline,
            "{} not back from its reboot",
            addr(last)
        );
        // Polling: nothing says when a simulated reboot ends but the node answering again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unimplemented(r: Result<impl std::fmt::Debug, TalosError>) {
    match r {
        Err(e) => assert_eq!(e.code(), Some(tonic::Code::Unimplemented), "{e}"),
        Ok(v) => panic!("answered on a v1.12 node: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_serves_its_own_upgrade_api() {
    let old = cluster("upg-old", 141, 1, 0);
    let new = cluster("upg-new", 142, 1, 0);
    let sim = start_sim(&[pinned(141, "v1.12.11"), pinned(142, "v1.13.0")]).await;
    let talos = port();
    talos
        .apply_in_maintenance(ip(141), "", config(&old, "v1.12.11").as_bytes())
        .await
        .unwrap();
    talos
        .apply_in_maintenance(ip(142), "", config(&new, "v1.13.0").as_bytes())
        .await
        .unwrap();
    let image = "factory.talos.dev/nocloud-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.9";

    // v1.12.11: no new API; the legacy Upgrade (preserve) installs and reboots by itself.
    let c = client(141).await;
    unimplemented(c.image_pull(image, Duration::from_secs(5)).await);
    unimplemented(c.lifecycle_upgrade(image, Duration::from_secs(5)).await);
    c.upgrade(image, true).await.unwrap();
    drop(c);
    assert_eq!(back(141).await, "v1.13.9");

    // v1.13.0: a config applied to the configured node (naming another installer) leaves the version.
    let c = client(142).await;
    c.apply_configuration(config(&new, "v1.13.9").as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(c.version().await.unwrap().tag, "v1.13.0");
    // An install of an image never pulled fails with its exit code, though the call succeeds.
    let err = c
        .lifecycle_upgrade(image, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TalosError::InstallFailed { exit_code: 1, messages, .. } if messages.contains("not found")),
        "{err}"
    );
    // Pulled, then installed: staged, not running, until the Reboot.
    let name = c.image_pull(image, Duration::from_secs(5)).await.unwrap();
    assert_eq!(name, image);
    let progress = c
        .lifecycle_upgrade(&name, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!progress.is_empty());
    assert_eq!(c.version().await.unwrap().tag, "v1.13.0");
    assert_eq!(sim.version(addr(142)).as_deref(), Some("v1.13.0"));
    c.reboot().await.unwrap();
    drop(c);
    assert_eq!(back(142).await, "v1.13.9");
}
