//! Steps that drive the secret store: the bundle (check-and-set, never a second one), the stored
//! credentials for people, and retiring a decommissioned cluster's paths.

use time::OffsetDateTime;

use crate::config::OnDecommission;
use crate::reconcile::error::TurnError;
use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::observe::{self, LoadedBundle};
use crate::reconcile::renewal::{self, Credential};
use crate::reconcile::turn::Turn;
use crate::secrets::{CreateOutcome, ReadOutcome, bundle_keys, bundle_record, secret_data};
use crate::talos::{ClusterUid, SecretsBundle};

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
        let lifetime = self.ctx.settings.credential_lifetime;
        for which in Credential::BOTH {
            let path = which.path(&self.paths).clone();
            if !store.read(&path).await?.is_absent() {
                continue;
            }
            let minted = renewal::mint(which, cluster, &bundle, now, lifetime)?;
            // Created only if still absent: a concurrent writer's credential is kept as it is.
            if let CreateOutcome::Created { version } =
                store.create(&path, &minted.data, &minted.metadata).await?
            {
                self.credentials.insert(which, minted.status(version));
            }
            self.say(format!("stored the {which} at {path}"));
            if which == Credential::Kubeconfig {
                crate::testhook::reached("kubeconfig-stored");
            }
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
