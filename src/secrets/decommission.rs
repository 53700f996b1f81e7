//! The secrets half of a decommission (DESIGN.md §7): after the VMs are gone, either mark kiln's three
//! paths of the cluster with `kiln-decommissioned-at` (`retain`, the default: an operator may still need
//! the CAs, and the mark keeps a new cluster of the same name `Blocked`) or destroy every version and
//! the metadata of those three (`destroy`).
//!
//! Only `talos`, `kubeconfig` and `secrets` are kiln's. Operators keep their own secrets beside them
//! (`{prefix}/{cluster}/argocd-admin`, `…/apps/db`, …): a decommission never lists the folder, so it
//! can neither destroy nor mark what kiln did not write.

use super::error::SecretsError;
use super::layout::{SecretPath, SecretPaths, meta_keys};
use super::port::{MetadataPatch, SecretStore};
use crate::config::OnDecommission;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecommissionReport {
    /// Paths marked now (`retain`).
    pub marked: Vec<SecretPath>,
    /// Paths already marked by an earlier run; their first mark is kept.
    pub already_marked: Vec<SecretPath>,
    /// Paths destroyed (`destroy`).
    pub destroyed: Vec<SecretPath>,
}

/// Idempotent: a rerun after a crash marks or destroys what is left, and keeps first marks.
#[tracing::instrument(level = "info", skip(store, now), fields(dir = %paths.dir, policy = ?policy))]
pub async fn decommission(
    store: &dyn SecretStore,
    paths: &SecretPaths,
    policy: OnDecommission,
    now: time::OffsetDateTime,
) -> Result<DecommissionReport, SecretsError> {
    let mut report = DecommissionReport::default();
    let mut kilns = Vec::new();
    for path in paths.all() {
        // Absent: never written, or destroyed by an earlier run or an operator: nothing to do.
        if !store.read(path).await?.is_absent() {
            kilns.push(path.clone());
        }
    }
    match policy {
        OnDecommission::Destroy => {
            for path in kilns {
                store.destroy(&path).await?;
                report.destroyed.push(path);
            }
        }
        OnDecommission::Retain => {
            let stamp = now
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| SecretsError::Config(format!("cannot format time: {e}")))?;
            for path in kilns {
                let current = store.read(&path).await?;
                if current.decommissioned_at().is_some() {
                    report.already_marked.push(path);
                    continue;
                }
                let patch = MetadataPatch::from([(
                    meta_keys::DECOMMISSIONED_AT.to_owned(),
                    Some(stamp.clone()),
                )]);
                match store.patch_metadata(&path, &patch).await {
                    Ok(()) => report.marked.push(path),
                    // Destroyed by an operator in between: nothing left to mark.
                    Err(SecretsError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    tracing::info!(
        marked = report.marked.len(),
        destroyed = report.destroyed.len(),
        "secrets decommissioned"
    );
    Ok(report)
}
