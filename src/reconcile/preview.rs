//! `kiln plan` (online): what the daemon would do for the intent at a revision, judged against what
//! Proxmox, the secret store and the Talos nodes show now. Only reads: one listing, secret reads,
//! Talos state probes. Nothing is written anywhere, not even kiln's own state folder.

use serde::Serialize;

use super::engine::Intent;
use super::observe;
use super::ports::Ports;
use super::records::Records;
use crate::config::{Config, OnDecommission};
use crate::plan::{self, ConvergeInput, DecommissionInput, Plan, Power};
use crate::secrets::{Prefix, SecretPaths};
use crate::spec::{Cluster, ClusterName, Node};

#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub plan: Plan,
    /// Every error of every invalid file (each such cluster is unknown: nothing is planned for it).
    pub errors: Vec<String>,
}

impl Preview {
    /// 0 nothing to do, 2 changes, 1 errors (as `terraform plan -detailed-exitcode`).
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() || self.plan.has_blockers() {
            1
        } else if self.plan.has_changes() {
            2
        } else {
            0
        }
    }
}

fn previous_of(records: &Records, name: &str) -> Option<Cluster> {
    let r = records.clusters.get(name)?;
    r.applied_revision.as_ref()?;
    crate::spec::load([(std::path::Path::new(&r.path), r.spec_text.as_str())])
        .clusters
        .into_iter()
        .next()
}

pub async fn preview(
    ports: &Ports,
    config: &Config,
    intent: &Intent,
    records: &Records,
) -> Result<Preview, String> {
    let inventory = ports
        .proxmox
        .observe()
        .await
        .map_err(|e| format!("proxmox: {e}"))?;
    let prefix = Prefix::parse(&config.secrets.prefix)?;
    let mut clusters = Vec::new();
    for (name, v) in &intent.valid {
        let cluster = &v.cluster;
        let wanted: Vec<_> = cluster.nodes.iter().map(|n| (n.number, n.vmid)).collect();
        let mut observed = observe::from_listing(&inventory, name, &wanted);
        let paths = SecretPaths::for_cluster(&prefix, &cluster.name);
        let view = observe::secrets(ports.secrets.as_ref(), &paths)
            .await
            .map_err(|e| format!("secret store: {e}"))?;
        observed.secrets = Some(view.observed);
        if let Some(b) = &view.bundle {
            let issued = crate::talos::credentials::kiln_talos_identity(&b.bundle)
                .map_err(|e| e.to_string())?;
            let identity =
                crate::talos::grpc::ClientIdentity::from_minted(b.bundle.os_ca.cert_pem(), &issued);
            let running: Vec<&Node> = cluster
                .nodes
                .iter()
                .filter(|n| {
                    observed
                        .vms
                        .get(&n.number)
                        .is_some_and(|vm| vm.power == Power::Running)
                })
                .collect();
            let states =
                observe::talos_states(ports.talos.as_ref(), &identity, &running).await;
            observed.nodes = Some(states.into_iter().map(|(n, (s, _))| (n, s)).collect());
        }
        let previous = previous_of(records, name);
        let applied = records
            .clusters
            .get(name)
            .and_then(|r| r.applied_revision.as_deref());
        clusters.push(plan::converge(ConvergeInput {
            desired: cluster,
            previous: previous.as_ref(),
            observed: &observed,
            drift_policy: config.reconcile.drift_policy,
            intent_changed: applied != Some(v.revision.as_str()),
        }));
    }
    let any_valid = !intent.valid.is_empty();
    for (name, record) in &records.clusters {
        if intent.present(name) || (!any_valid && !config.reconcile.allow_empty) {
            continue;
        }
        let Ok(cluster_name) = name.parse::<ClusterName>() else {
            continue;
        };
        let mut observed = observe::from_listing(&inventory, name, &[]);
        let paths = SecretPaths::for_cluster(&prefix, &cluster_name);
        if let Ok(view) = observe::secrets(ports.secrets.as_ref(), &paths).await {
            observed.secrets = Some(view.observed);
        }
        clusters.push(plan::decommission(DecommissionInput {
            name: &cluster_name,
            protected: record.protected,
            observed: &observed,
            destroy_secrets: config.secrets.on_decommission == OnDecommission::Destroy,
        }));
    }
    let errors = intent
        .invalid
        .values()
        .map(|(_, m)| m.clone())
        .collect::<Vec<_>>();
    Ok(Preview {
        plan: Plan { clusters },
        errors,
    })
}
