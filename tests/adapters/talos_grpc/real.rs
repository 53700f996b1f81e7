//! Issue 23: where the simulator now answers as real Talos does (its sources named in
//! `src/sim/talos/**` and docs/upstream-talos.md), and kiln's client with it.

use std::time::{Duration, Instant};

use kiln::sim::talos::validate::SchemaValidator;
use kiln::sim::talos::{NodeSpec, SimOptions, SimTalos};
use kiln::talos::grpc::proto::machine::ApplyMode;
use kiln::talos::grpc::{NodeState, TalosClient, TalosError, TalosPort};

use super::{addr, admin, bundle, cluster, ip, options, port, schema_dir, start_sim};

fn node(last: u8, version: Option<&str>, platform: Option<&str>) -> NodeSpec {
    NodeSpec {
        addr: addr(last),
        uuid: None,
        version: version.map(str::to_owned),
        platform: platform.map(str::to_owned),
    }
}

#[test]
fn listen_specs_take_a_platform() {
    let spec: NodeSpec = "127.0.10.1:50000,version=v1.11.6,platform=metal"
        .parse()
        .unwrap();
    assert_eq!(spec.platform.as_deref(), Some("metal"));
    assert_eq!(spec.version.as_deref(), Some("v1.11.6"));
    assert!("127.0.10.1:50000,platform=".parse::<NodeSpec>().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_etcd_member_list_ends_at_the_callers_deadline() {
    let c = cluster("deadline", 101, 1, 0);
    let _sim = start_sim(&[node(101, None, None)]).await;
    let talos = port();
    let cfg = super::config_for(&c, ip(101));
    talos
        .apply_in_maintenance(ip(101), "", cfg.as_bytes())
        .await
        .unwrap();

    // Configured, not bootstrapped: the node's etcd client waits for a member until the deadline the
    // call carries, and answers DeadlineExceeded then (kiln's own wait is a little longer).
    let client = TalosClient::connect_mtls(addr(101), &admin(), options())
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .etcd_member_list_within(Duration::from_secs(1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err.code(),
        Some(tonic::Code::DeadlineExceeded),
        "the node never saw the caller's deadline: {err}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1900),
        "answered after {took:?}, not at the 1 s deadline"
    );

    // Once bootstrapped, the list answers at once.
    talos.bootstrap(ip(101), &admin()).await.unwrap();
    let members = talos
        .etcd_members_within(ip(101), &admin(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_talos_judges_the_kubernetes_version() {
    let _sim = start_sim(&[
        node(102, Some("v1.11.6"), None),
        node(103, Some("v1.13.9"), None),
    ])
    .await;
    let talos = port();
    assert_eq!(talos.maintenance_version(ip(102)).await.unwrap(), "v1.11.6");

    // A 1.11 template refuses Kubernetes 1.35 even in its own contract: RuntimeValidate of the
    // running Talos, `InvalidArgument`, wrapped as the ≤1.12 maintenance server wraps it.
    let mut old = cluster("oldk8s", 102, 1, 0);
    old.spec.kubernetes.version = "v1.35.0".parse().unwrap();
    let n = old.nodes[0].clone();
    let cfg = kiln::talos::config::render(&old, &n, bundle(), "v1.11.6".parse().unwrap()).unwrap();
    let err = talos
        .apply_in_maintenance(ip(102), "", cfg.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("runtime configuration validation failed")
            && text
                .contains("version of Kubernetes 1.35.0 is too new to be used with Talos 1.11.6"),
        "{text}"
    );
    assert_eq!(
        talos.node_state(ip(102), &admin()).await,
        NodeState::Maintenance
    );

    // A 1.13 template takes the same Kubernetes.
    let mut new = cluster("newk8s", 103, 1, 0);
    new.spec.kubernetes.version = "v1.35.0".parse().unwrap();
    let n = new.nodes[0].clone();
    let cfg = kiln::talos::config::render(&new, &n, bundle(), "v1.13.9".parse().unwrap()).unwrap();
    talos
        .apply_in_maintenance(ip(103), "", cfg.as_bytes())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_of_another_platform_gets_no_config() {
    let sim = start_sim(&[node(104, None, Some("metal"))]).await;
    let talos = port();
    let c = cluster("metal", 104, 1, 0);
    let cfg = super::config_for(&c, ip(104));
    let err = talos
        .apply_in_maintenance(ip(104), "", cfg.as_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TalosError::WrongPlatform { platform, .. } if platform == "metal"),
        "{err}"
    );
    assert!(err.to_string().contains("nocloud"), "{err}");
    assert!(sim.applied_config(addr(104)).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_reboots_and_an_apply_never_changes_the_version() {
    let options = SimOptions {
        dump_dir: None,
        validator: Some(std::sync::Arc::new(SchemaValidator::new(schema_dir()))),
        reboot_delay: Some(Duration::from_millis(1500)),
    };
    let sim = SimTalos::start(&[node(105, None, None)], options)
        .await
        .unwrap();
    let talos = port();
    let id = admin();
    let c = cluster("upg", 105, 1, 0);
    let n = c.nodes[0].clone();
    let cfg = kiln::talos::config::render(&c, &n, bundle(), "v1.13.9".parse().unwrap()).unwrap();
    talos
        .apply_in_maintenance(ip(105), "", cfg.as_bytes())
        .await
        .unwrap();
    assert_eq!(sim.version(addr(105)).as_deref(), Some("v1.13.9"));

    // A config naming a newer installer changes nothing about the running version: only an
    // upgrade (or an install from maintenance) does.
    let newer = kiln::talos::config::render(&c, &n, bundle(), "v1.13.10".parse().unwrap()).unwrap();
    assert!(newer.contains(":v1.13.10"));
    talos
        .apply_configured(ip(105), &id, newer.as_bytes(), ApplyMode::Auto, false)
        .await
        .unwrap();
    assert_eq!(talos.version(ip(105), &id).await.unwrap().tag, "v1.13.9");

    // The upgrade reboots the node: nothing answers for a while, then it runs the new tag.
    let started = Instant::now();
    talos
        .upgrade(
            ip(105),
            &id,
            "factory.talos.dev/nocloud-installer/x:v1.13.10",
            true,
        )
        .await
        .unwrap();
    let during = talos.node_state(ip(105), &id).await;
    assert!(
        matches!(&during, NodeState::Unreachable { reason } if reason.contains("refused")),
        "a rebooting machine refuses connections: {during:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let NodeState::Configured(_) = talos.node_state(ip(105), &id).await {
            break;
        }
        assert!(Instant::now() < deadline, "the node never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "back after {:?}, before the reboot delay",
        started.elapsed()
    );
    assert_eq!(talos.version(ip(105), &id).await.unwrap().tag, "v1.13.10");
}
