//! The simulator as a configured node meets a config change (issue 27): it serves the running config
//! as COSI `MachineConfigs` to `os:admin` only, decides reboot or not as Talos 1.13's
//! `CanApplyImmediate` does, refuses NO_REBOOT for what needs a reboot, reboots on a REBOOT apply, and
//! records every apply in order. Node at 127.0.10.115.

use std::time::{Duration, Instant};

use kiln::sim::talos::NodeSpec;
use kiln::sim::talos::live::ApplyRecord;
use kiln::talos::config::compare::differing_documents;
use kiln::talos::credentials::TalosRole;
use kiln::talos::grpc::TalosClient;
use kiln::talos::grpc::machine_config::running_config;
use kiln::talos::grpc::proto::machine::ApplyMode;
use serde_yaml::Value;

use super::{addr, admin, cluster, config_for, identity, options, port, start_sim};
use kiln::talos::grpc::TalosPort;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_node_applies_live_what_talos_applies_live_and_reboots_for_the_rest() {
    let c = cluster("live", 115, 1, 0);
    let at = addr(115);
    let spec: NodeSpec = at.to_string().parse().unwrap();
    let sim = start_sim(&[spec]).await;
    let cfg = config_for(&c, at.ip());
    port()
        .apply_in_maintenance(at.ip(), "", cfg.as_bytes())
        .await
        .unwrap();
    let client = TalosClient::connect_mtls(at, &admin(), options())
        .await
        .unwrap();

    // The running config, as sent, to os:admin only (a Sensitive resource).
    let running = running_config(&client).await.unwrap();
    assert_eq!(running, cfg);
    let reader = TalosClient::connect_mtls(at, &identity(TalosRole::Reader), options())
        .await
        .unwrap();
    // Not `unwrap_err`: a failure must not print the config, which holds the cluster's keys.
    let Err(refused) = running_config(&reader).await else {
        panic!("an os:reader read the MachineConfig");
    };
    assert_eq!(
        refused.code(),
        Some(tonic::Code::PermissionDenied),
        "{refused}"
    );

    // A registry mirror lives in its own document: it applies without a reboot.
    let mirrored = format!(
        "{cfg}---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: docker.io\nendpoints:\n  - url: https://registry.lan\n"
    );
    let dry = client
        .apply_configuration(mirrored.as_bytes(), ApplyMode::Auto, true)
        .await
        .unwrap();
    assert_eq!(dry.mode, ApplyMode::NoReboot);
    assert!(dry.mode_details.starts_with("Dry run summary:"), "{dry:?}");
    assert_eq!(
        running_config(&client).await.unwrap(),
        cfg,
        "a dry run changes nothing"
    );
    client
        .apply_configuration(mirrored.as_bytes(), ApplyMode::NoReboot, false)
        .await
        .unwrap();
    assert_eq!(running_config(&client).await.unwrap(), mirrored);

    // A person turns off disk quotas by hand: a field outside CanApplyImmediate's list.
    sim.edit_running_config(at, |docs| {
        let v1 = docs.iter_mut().find(|d| d.get("kind").is_none()).unwrap();
        v1["machine"]["features"]["diskQuotaSupport"] = Value::Bool(false);
    })
    .unwrap();
    let edited = running_config(&client).await.unwrap();
    assert_eq!(
        differing_documents(&edited, &mirrored).unwrap(),
        vec!["v1alpha1".to_owned()]
    );
    // Putting it back needs a reboot: AUTO says so, NO_REBOOT is refused as Talos refuses it.
    let dry = client
        .apply_configuration(mirrored.as_bytes(), ApplyMode::Auto, true)
        .await
        .unwrap();
    assert_eq!(dry.mode, ApplyMode::Reboot);
    let err = client
        .apply_configuration(mirrored.as_bytes(), ApplyMode::NoReboot, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(
        err.to_string()
            .contains("this config change can't be applied in immediate mode"),
        "{err}"
    );
    let done = client
        .apply_configuration(mirrored.as_bytes(), ApplyMode::Reboot, false)
        .await
        .unwrap();
    assert_eq!(done.mode, ApplyMode::Reboot);
    // It reboots: nothing answers, then it runs the config it was given.
    assert!(
        TalosClient::connect_mtls(at, &admin(), options())
            .await
            .is_err()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        if let Ok(c) = TalosClient::connect_mtls(at, &admin(), options()).await
            && let Ok(text) = running_config(&c).await
        {
            break text;
        }
        assert!(Instant::now() < deadline, "the node never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(back, mirrored);

    let seen: Vec<(bool, ApplyMode, Option<ApplyMode>)> = sim
        .applies()
        .iter()
        .map(|r: &ApplyRecord| (r.dry_run, r.requested, r.chosen))
        .collect();
    assert_eq!(
        seen,
        vec![
            (false, ApplyMode::Auto, Some(ApplyMode::NoReboot)),
            (true, ApplyMode::Auto, Some(ApplyMode::NoReboot)),
            (false, ApplyMode::NoReboot, Some(ApplyMode::NoReboot)),
            (true, ApplyMode::Auto, Some(ApplyMode::Reboot)),
            (false, ApplyMode::NoReboot, None),
            (false, ApplyMode::Reboot, Some(ApplyMode::Reboot)),
        ]
    );
}
