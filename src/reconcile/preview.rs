//! `kiln plan` (online): what the daemon would do for the intent at a revision, judged against what
//! Proxmox, the secret store, the Talos nodes and Kubernetes show now, through the worker's own
//! observation (`observe::cluster`). Only reads: nothing is written anywhere, not even kiln's own
//! state folder (a cut-short uid mirror is left for the daemon to repair).

use serde::Serialize;

use super::engine::Intent;
use super::observe::{self, Depth};
use super::ports::Ports;
use super::records::Records;
use crate::config::{Config, OnDecommission};
use crate::plan::{self, ConvergeInput, DecommissionInput, Plan};
use crate::secrets::{Prefix, SecretPaths};
use crate::spec::{Cluster, ClusterName};

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
        let paths = SecretPaths::for_cluster(&prefix, &cluster.name);
        // The worker's own deep look: secrets, Talos on kiln's running VMs only, Kubernetes health.
        let mut observed = observe::cluster(ports, &inventory, &paths, cluster, Depth::Deep)
            .await
            .map_err(|e| e.report())?
            .observed;
        // A node that failed its upgrade blocks the plan as it blocks the daemon (read only here).
        if let Some(r) = records.clusters.get(name) {
            super::upgrade_record::attach(&mut r.clone(), &mut observed, &v.revision);
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
    // The daemon's own rule: an emptied folder is a mistake, so nothing is shown as decommissioned.
    let emptied =
        super::policy::empty_folder_holds(!intent.valid.is_empty(), config.reconcile.allow_empty);
    for (name, record) in &records.clusters {
        if intent.present(name) || emptied {
            continue;
        }
        let Ok(cluster_name) = name.parse::<ClusterName>() else {
            continue;
        };
        let paths = SecretPaths::for_cluster(&prefix, &cluster_name);
        // A store that does not answer leaves the secrets unknown; the VMs are still shown.
        let observed = match observe::leaving(ports, &inventory, &paths, name).await {
            Ok((observed, _)) => observed,
            Err(_) => observe::from_listing(&inventory, name, &[]),
        };
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
