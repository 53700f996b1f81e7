//! The step handlers, grouped by the system they drive: `secrets` (the store), `vm` (Proxmox, with
//! the drain a reboot or a destroy owes), `talos` (configs, bootstrap), `kube` (health). Each step
//! re-checks the system before it acts, so a step that is already true is skipped and a crash
//! anywhere resumes from observation (DESIGN.md §7 "Crash safety").

mod credentials;
mod join;
mod k8s_upgrade;
mod kube;
pub(super) mod live_config;
mod secrets;
mod talos;
mod upgrade;
mod vm;

use tracing::Instrument;

use super::executor::{StepResult, StepRunner, action_key};
use super::turn::Turn;
use crate::plan::Action;

impl Turn<'_> {
    async fn run(&mut self, action: &Action) -> StepResult {
        let span = tracing::info_span!("action", action = %action_key(action));
        async {
            match action {
                Action::GenerateSecrets => self.generate_secrets().await,
                Action::CreateVm { number, .. } | Action::FinishVm { number, .. } => {
                    self.create_vm(*number).await
                }
                Action::StartVm { number, .. } => self.start_vm(*number).await,
                Action::ResizeVm { number, .. } => self.resize_vm(*number).await,
                Action::ApplyConfig { number, .. } => self.apply_config(*number).await,
                Action::UpdateConfig { number, .. } => self.update_config(*number).await,
                Action::Bootstrap { number, .. } => self.bootstrap(*number).await,
                Action::JoinControlPlane { number, .. } => self.join_control_plane(*number).await,
                Action::StoreCredentials => self.store_credentials().await,
                Action::WaitHealthy => self.wait_healthy().await,
                Action::Uncordon { name } => self.uncordon(name).await,
                Action::RenewCredentials {
                    kubeconfig,
                    talosconfig,
                } => self.renew_credentials(*kubeconfig, *talosconfig).await,
                Action::RemoveNode {
                    number,
                    role,
                    vmid,
                    name,
                } => self.remove_node(*number, *role, *vmid, name).await,
                Action::DestroyVm { number, vmid, name } => {
                    self.destroy_vm(*number, *vmid, name).await
                }
                Action::RetireSecrets { destroy } => self.retire_secrets(*destroy).await,
                Action::UpgradeTalos { number, to, .. } => self.upgrade_talos(*number, *to).await,
                Action::UpgradeKubernetes {
                    number,
                    component,
                    to,
                    ..
                } => self.upgrade_kubernetes(*number, *component, *to).await,
                Action::SyncManifests { to } => self.sync_manifests(*to).await,
            }
        }
        .instrument(span)
        .await
    }
}

impl StepRunner for Turn<'_> {
    async fn run_batch(&mut self, batch: &[Action]) -> Vec<StepResult> {
        if let [action] = batch {
            return vec![self.run(action).await];
        }
        // Side by side: each runs on its own copy of the turn's read-only state.
        let runs = batch.iter().map(|action| {
            let mut turn = self.fork();
            async move {
                let r = turn.run(action).await;
                (r, turn)
            }
        });
        let before = self.started.clone();
        let (results, forks): (Vec<_>, Vec<_>) =
            futures::future::join_all(runs).await.into_iter().unzip();
        self.join(&before, forks);
        results
    }
}
