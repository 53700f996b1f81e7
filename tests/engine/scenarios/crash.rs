//! DESIGN.md §7 "Crash safety": the engine stopped dead at each step of a new cluster's progress (a
//! [`Freeze`] armed on the runtime that runs it: the task at the point never goes on, as after a
//! `kill -9`), then a new engine over the same state folder, secret store, remote and lab converges
//! with no duplicate VM, no second secrets bundle and no second etcd bootstrap.
//!
//! `vm-cloned` and `vm-started` are reached in the real `proxmox` adapter; they belong in this list once
//! the lab's Proxmox runs under that adapter (the simulator implements the port itself until then, so
//! the engine never passes them here and their tests would fail with "never reached").

use std::sync::Arc;

use kiln::reconcile::status::Phase;
use kiln::testhook::Freeze;

use super::{CONVERGE, Settings, Site, assert_phase, settle};
use crate::fixture::ClusterFixture;

/// The runtime the first engine runs on, shut down without waiting for the frozen task (dropping a
/// runtime would wait for it forever, and may not happen inside the test's own runtime).
struct CrashRuntime(Option<tokio::runtime::Runtime>);

impl CrashRuntime {
    fn armed(freeze: &Arc<Freeze>) -> Self {
        let armed = freeze.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || armed.arm_current_thread())
            .build()
            .expect("a runtime for the engine that crashes");
        Self(Some(rt))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle()
    }
}

impl Drop for CrashRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn crash_at(point: &str, name: &str) {
    let c = ClusterFixture::new(name, 1, 1);
    let site = Site::new(&[&c]);
    let freeze = Freeze::new(point);
    let rt = CrashRuntime::armed(&freeze);

    let mut first = site.engine(Settings::default()).await;
    let mut run = rt
        .handle()
        .spawn(async move { first.run_once(CONVERGE).await });
    tokio::select! {
        () = freeze.reached() => {}
        ended = &mut run => panic!("the engine never stopped at {point}; it ended with {ended:?}"),
        () = tokio::time::sleep(CONVERGE) => panic!("the engine did not reach {point} in {CONVERGE:?}"),
    }

    // kiln starts again over what the dead one left.
    let mut engine = site.engine(Settings::default()).await;
    settle(&mut engine, &format!("restarted after a crash at {point}")).await;
    assert_phase(&engine, &c.name, Phase::Ready);
    // No duplicate or orphan VM, and no second etcd cluster (the simulator records one as broken).
    site.assert_exactly(&c).await;
    assert_eq!(
        site.all_vms().await.len(),
        c.vmids().len(),
        "VMs besides the cluster's: {:?}",
        site.all_vms().await
    );
    assert_eq!(
        site.secret_version(&c.name, "secrets").await,
        Some(1),
        "the secrets bundle was written again"
    );
    assert!(
        !run.is_finished(),
        "the crashed engine went on after {point}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_bundle_is_stored_converges_with_that_bundle() {
    crash_at("bundle-stored", "crashbundle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_config_is_applied_converges() {
    crash_at("config-applied", "crashconfig").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_bootstrap_and_its_marker_does_not_bootstrap_again() {
    crash_at("etcd-bootstrapped", "crashboot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_kubeconfig_is_stored_converges() {
    crash_at("kubeconfig-stored", "crashkube").await;
}

// The two Proxmox points are inside the real adapter, which the lab now drives over the simulated PVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_clone_converges_without_a_second_clone() {
    crash_at("vm-cloned", "crashclone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_start_converges() {
    crash_at("vm-started", "crashstart").await;
}
