//! Steps that drive the secret store: the bundle (check-and-set, never a second one), the stored
//! credentials for people, and retiring a decommissioned cluster's paths.

use std::collections::BTreeMap;
use std::net::IpAddr;

use time::OffsetDateTime;

use crate::config::OnDecommission;
use crate::reconcile::error::TurnError;
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::observe::{self, LoadedBundle};
use crate::reconcile::state_file::rfc3339;
use crate::reconcile::turn::Turn;
use crate::redact::Secret;
use crate::secrets::{
    CreateOutcome, CustomMetadata, ReadOutcome, bundle_keys, bundle_record, kubeconfig_keys,
    meta_keys, secret_data, talos_keys,
};
use crate::talos::{ClusterUid, SecretsBundle, credentials};

impl Turn<'_> {
    pub(super) async fn generate_secrets(&mut self) -> StepResult {
        let store = &self.ctx.ports.secrets;
        let winner = match store.read(&self.paths.secrets).await? {
            ReadOutcome::Absent => {
                self.say("generating the Talos secrets bundle");
                let bundle = tokio::task::spawn_blocking(SecretsBundle::generate).await??;
                let uid = ClusterUid::generate();
                let (data, meta) = bundle_record(
                    uid.as_str(),
                    secret_data([(bundle_keys::BUNDLE, bundle.to_yaml())]),
                );
                match store.create(&self.paths.secrets, &data, &meta).await? {
                    CreateOutcome::Created { version } => {
                        self.say(format!(
                            "stored the secrets bundle at {} (version {version})",
                            self.paths.secrets
                        ));
                        crate::testhook::reached("bundle-stored");
                        self.bundle = Some(LoadedBundle {
                            bundle,
                            cluster_uid: uid.as_str().to_owned(),
                        });
                        return Ok(Flow::Done);
                    }
                    // Someone (an earlier run whose reply was lost) got there first: use theirs.
                    CreateOutcome::AlreadyExists(other) => other,
                }
            }
            other => other,
        };
        match winner {
            ReadOutcome::Present(stored) => {
                self.bundle =
                    Some(observe::parse_bundle(&stored).map_err(TurnError::BundleUnreadable)?);
                Ok(Flow::Done)
            }
            _ => Err(TurnError::BundleGone),
        }
    }

    pub(super) async fn store_credentials(&mut self) -> StepResult {
        let cluster = self.cluster()?;
        let bundle = self.bundle()?.bundle.clone();
        let store = self.ctx.ports.secrets.clone();
        let now = OffsetDateTime::now_utc();
        if store.read(&self.paths.kubeconfig).await?.is_absent() {
            let endpoint = cluster.endpoint();
            let kc = credentials::admin_kubeconfig(cluster.name.as_str(), &endpoint, &bundle, now)?;
            let data = BTreeMap::from([
                (
                    kubeconfig_keys::KUBECONFIG.to_owned(),
                    Secret::new(kc.yaml.expose()),
                ),
                (kubeconfig_keys::SERVER.to_owned(), Secret::new(&endpoint)),
                (
                    kubeconfig_keys::CA_CRT.to_owned(),
                    Secret::new(bundle.k8s_ca.cert_pem()),
                ),
                (
                    kubeconfig_keys::CLIENT_CRT.to_owned(),
                    Secret::new(&kc.client.cert.cert_pem),
                ),
                (
                    kubeconfig_keys::CLIENT_KEY.to_owned(),
                    Secret::new(kc.client.cert.key_pem.expose()),
                ),
            ]);
            let meta = CustomMetadata::from([(
                meta_keys::EXPIRES_AT.to_owned(),
                rfc3339(kc.client.not_after),
            )]);
            store.create(&self.paths.kubeconfig, &data, &meta).await?;
            self.say(format!(
                "stored the kubeconfig at {}",
                self.paths.kubeconfig
            ));
            crate::testhook::reached("kubeconfig-stored");
        }
        if store.read(&self.paths.talos).await?.is_absent() {
            let ips: Vec<IpAddr> = cluster.control_planes().map(|n| IpAddr::V4(n.ip)).collect();
            let tc = credentials::talosconfig(cluster.name.as_str(), &ips, &bundle, now)?;
            let data = BTreeMap::from([(
                talos_keys::TALOSCONFIG.to_owned(),
                Secret::new(tc.yaml.expose()),
            )]);
            let meta = CustomMetadata::from([(
                meta_keys::EXPIRES_AT.to_owned(),
                rfc3339(tc.client.not_after),
            )]);
            store.create(&self.paths.talos, &data, &meta).await?;
            self.say(format!("stored the talosconfig at {}", self.paths.talos));
        }
        Ok(Flow::Done)
    }

    pub(super) async fn retire_secrets(&mut self, destroy: bool) -> StepResult {
        let policy = if destroy {
            OnDecommission::Destroy
        } else {
            OnDecommission::Retain
        };
        let report = crate::secrets::decommission(
            self.ctx.ports.secrets.as_ref(),
            &self.paths,
            policy,
            OffsetDateTime::now_utc(),
        )
        .await?;
        self.say(format!(
            "secrets {}: {} marked, {} destroyed",
            if destroy { "destroyed" } else { "retained" },
            report.marked.len() + report.already_marked.len(),
            report.destroyed.len()
        ));
        Ok(Flow::Done)
    }
}
