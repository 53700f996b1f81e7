//! Renewing the stored kubeconfig and talosconfig in the last third of their life (DESIGN §5). The
//! step judges again on the version it reads and writes check-and-set on that version: a writer that
//! got there first (a `kiln rotate`, another kiln) wins, and this step writes nothing.

use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::renewal::{Condition, Credential, Renewal, RenewalError, Renewer};
use crate::reconcile::status::CredentialStatus;
use crate::reconcile::turn::Turn;

impl From<RenewalError> for crate::reconcile::error::TurnError {
    fn from(e: RenewalError) -> Self {
        match e {
            RenewalError::Store(e) => e.into(),
            RenewalError::Mint { source, .. } => source.into(),
        }
    }
}

impl Turn<'_> {
    pub(super) async fn renew_credentials(
        &mut self,
        kubeconfig: bool,
        talosconfig: bool,
    ) -> StepResult {
        let cluster = self.cluster()?;
        let bundle = self.bundle()?.bundle.clone();
        let store = self.ctx.ports.secrets.clone();
        let renewer = Renewer {
            store: store.as_ref(),
            paths: &self.paths,
            cluster,
            bundle: &bundle,
            lifetime: self.ctx.settings.credential_lifetime,
        };
        let wanted = [
            (Credential::Kubeconfig, kubeconfig),
            (Credential::Talosconfig, talosconfig),
        ];
        for (which, _) in wanted.into_iter().filter(|(_, w)| *w) {
            let outcome = renewer.renew(which, Condition::Due).await?;
            self.say(format!("{which} at {}: {outcome}", which.path(&self.paths)));
            if let Renewal::Renewed {
                to,
                issued_at,
                expires_at,
                ..
            } = outcome
            {
                self.credentials.insert(
                    which,
                    CredentialStatus {
                        expires_at,
                        issued_at: Some(issued_at),
                        version: Some(to),
                        expires_in_seconds: None,
                    },
                );
            }
        }
        Ok(Flow::Done)
    }
}
