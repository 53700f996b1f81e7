//! Server-side apply of the bootstrap manifests, as `talosctl upgrade-k8s` syncs them on Talos ≥ 1.13,
//! and the read that tells whether they are in sync: a workload's first container image.
//!
//! What talosctl does (siderolabs/talos v1.13.9 `pkg/cluster/kubernetes/talos_managed.go`
//! `syncManifestsSSA` → go-kubernetes `kubernetes/ssa/apply.go` `Manager.Apply` → fluxcd `pkg/ssa`
//! `ResourceManager.apply`): each object gets the annotation `config.k8s.io/owning-inventory:
//! talos-bootstrap-manifests-inventory` (`prepareObjects`; `constants.KubernetesBootstrapManifestsInventoryName`,
//! the inventory Talos's `ManifestApplyController` marks the objects it creates with), then is applied
//! server-side with the field manager `talos` (`constants.KubernetesFieldManagerName`) and
//! `ForceOwnership`. kiln does the same per object. Not done here: the dry-run drift check that skips
//! unchanged objects, the inventory ConfigMap and pruning of objects Talos no longer renders, the
//! staged apply of CRDs and Namespaces (the manifests hold none), and the wait for rollouts.

use ::kube::Client;
use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use super::KubeError;

/// The field manager Talos applies its manifests with; kiln takes over the same fields, so a cluster
/// whose manifests Talos or `talosctl` applied before has one owner of them, not two.
pub const FIELD_MANAGER: &str = "talos";

/// The annotation naming the inventory an object belongs to, and Talos's bootstrap-manifest
/// inventory. An object applied without it would lose it (the manager `talos` owned it), and a later
/// `talosctl upgrade-k8s` would no longer take the object for its own.
pub const INVENTORY_ANNOTATION: &str = "config.k8s.io/owning-inventory";
pub const INVENTORY: &str = "talos-bootstrap-manifests-inventory";

/// The object as talosctl applies it: marked as a member of Talos's inventory. An object that names
/// another inventory is refused, as go-kubernetes `prepareObjects` refuses it.
pub fn with_inventory(object: &serde_json::Value) -> Result<serde_json::Value, String> {
    let mut object = object.clone();
    let meta = object
        .as_object_mut()
        .ok_or("not an object")?
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or("metadata is not an object")?;
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if annotations.is_null() {
        *annotations = serde_json::json!({});
    }
    let annotations = annotations
        .as_object_mut()
        .ok_or("metadata.annotations is not an object")?;
    match annotations.get(INVENTORY_ANNOTATION) {
        Some(serde_json::Value::String(owner)) if owner == INVENTORY => {}
        Some(other) => {
            return Err(format!(
                "already has an inventory annotation ({INVENTORY_ANNOTATION}: {other})"
            ));
        }
        None => {
            annotations.insert(INVENTORY_ANNOTATION.into(), INVENTORY.into());
        }
    }
    Ok(object)
}

/// What identifies an object to apply: its resource (from `apiVersion` and `kind`), namespace and
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// The object's resource from `apiVersion` (`v1`, `apps/v1`) and `kind`, the plural as kube-rs
    /// derives it (every kind of the bootstrap manifests has a regular plural). An object with a
    /// `metadata.namespace` is namespaced; one without is cluster-scoped (Talos sets the namespace
    /// on every namespaced object it renders).
    pub fn of(object: &serde_json::Value) -> Result<Self, String> {
        let field = |f: &str| object.get(f).and_then(serde_json::Value::as_str);
        let api_version = field("apiVersion").ok_or("no apiVersion")?;
        let kind = field("kind").ok_or("no kind")?;
        let meta = |f: &str| {
            object
                .get("metadata")
                .and_then(|m| m.get(f))
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let name = meta("name").ok_or_else(|| format!("{kind} without metadata.name"))?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        Ok(Self {
            resource: ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
            namespace: meta("namespace").map(str::to_owned),
            name: name.to_owned(),
        })
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.resource.kind, self.name),
            None => format!("{} {}", self.resource.kind, self.name),
        }
    }
}

/// Applies each object in order (server-side, manager `talos`, forced); how many were applied. The
/// first failure stops the sync, naming the object: the order is Talos's (RBAC and config before
/// the workloads that use them).
pub async fn apply_manifests(
    client: &Client,
    objects: &[serde_json::Value],
) -> Result<usize, KubeError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = 0;
    for (i, object) in objects.iter().enumerate() {
        let invalid = |message| KubeError::Manifest { index: i, message };
        let target = ObjectRef::of(object).map_err(invalid)?;
        let object =
            with_inventory(object).map_err(|e| invalid(format!("{}: {e}", target.describe())))?;
        target
            .api(client)
            .patch(&target.name, &params, &Patch::Apply(&object))
            .await
            .map_err(KubeError::api(format!(
                "server-side apply of {}",
                target.describe()
            )))?;
        applied += 1;
    }
    Ok(applied)
}

/// The first container image of a DaemonSet or Deployment (`apps/v1`), `None` when there is no such
/// object.
pub async fn workload_image(
    client: &Client,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, KubeError> {
    if !matches!(kind, "DaemonSet" | "Deployment") {
        return Err(KubeError::Manifest {
            index: 0,
            message: format!("{kind} is not a workload kind kiln reads (DaemonSet, Deployment)"),
        });
    }
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object = api
        .get_opt(name)
        .await
        .map_err(KubeError::api(format!("get {kind} {namespace}/{name}")))?;
    Ok(object.and_then(|o| first_image(&o.data)))
}

/// `spec.template.spec.containers[0].image`.
fn first_image(data: &serde_json::Value) -> Option<String> {
    data.pointer("/spec/template/spec/containers/0/image")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_resource_comes_from_api_version_and_kind() {
        let ds = ObjectRef::of(&json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "kube-proxy", "namespace": "kube-system" },
        }))
        .unwrap();
        assert_eq!(ds.resource.group, "apps");
        assert_eq!(ds.resource.plural, "daemonsets");
        assert_eq!(ds.namespace.as_deref(), Some("kube-system"));

        let crb = ObjectRef::of(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "system:coredns" },
        }))
        .unwrap();
        assert_eq!(crb.resource.plural, "clusterrolebindings");
        assert_eq!(crb.namespace, None);

        let sa = ObjectRef::of(&json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "coredns", "namespace": "kube-system" },
        }))
        .unwrap();
        assert_eq!(sa.resource.group, "");
        assert_eq!(sa.resource.api_version, "v1");
        assert_eq!(sa.resource.plural, "serviceaccounts");

        assert!(
            ObjectRef::of(&json!({ "kind": "ConfigMap", "metadata": { "name": "x" } })).is_err()
        );
        assert!(ObjectRef::of(&json!({ "apiVersion": "v1", "kind": "ConfigMap" })).is_err());
    }

    #[test]
    fn each_object_is_marked_as_a_member_of_talos_inventory() {
        let bare =
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "a" } });
        let marked = with_inventory(&bare).unwrap();
        assert_eq!(
            marked["metadata"]["annotations"][INVENTORY_ANNOTATION],
            "talos-bootstrap-manifests-inventory"
        );
        // Other annotations stay; an object already in Talos's inventory is unchanged.
        let annotated = json!({ "metadata": { "name": "kube-dns",
            "annotations": { "prometheus.io/port": "9153" } } });
        let marked = with_inventory(&annotated).unwrap();
        assert_eq!(
            marked["metadata"]["annotations"]["prometheus.io/port"],
            "9153"
        );
        assert_eq!(with_inventory(&marked).unwrap(), marked);
        let foreign = json!({ "metadata": { "name": "x",
            "annotations": { INVENTORY_ANNOTATION: "someone-else" } } });
        assert!(
            with_inventory(&foreign)
                .unwrap_err()
                .contains("someone-else")
        );
    }

    #[test]
    fn the_first_container_image() {
        let d = json!({ "spec": { "template": { "spec": { "containers": [
            { "name": "a", "image": "one:1" }, { "name": "b", "image": "two:2" } ] } } } });
        assert_eq!(first_image(&d).as_deref(), Some("one:1"));
        assert_eq!(first_image(&json!({ "spec": {} })), None);
    }
}
