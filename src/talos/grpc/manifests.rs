//! The bootstrap manifests a control plane renders (kube-proxy, CoreDNS, flannel and their RBAC),
//! read over COSI as `talosctl upgrade-k8s` reads them before its manifest sync.
//!
//! siderolabs/talos v1.13.9 `pkg/machinery/resources/k8s/manifest.go`: type
//! `Manifests.kubernetes.talos.dev`, namespace `controlplane` (`k8s.ControlPlaneNamespaceName`); the
//! spec marshals to YAML as the list of objects itself. No sensitivity is set, so every role may
//! read it (`internal/app/resources/access.go`). go-kubernetes `kubernetes/manifests/get.go`
//! `GetBootstrapManifests` lists every resource of the type and takes each resource's objects in
//! turn; COSI lists by id, so the order is resource-id order (`05-flannel` before `10-kube-proxy`).

use super::client::TalosClient;
use super::error::TalosError;

/// (namespace, type)
pub const MANIFESTS: (&str, &str) = ("controlplane", "Manifests.kubernetes.talos.dev");

/// Every object of every Manifests resource, in resource-id order, then in each resource's own
/// order. A worker has none (Talos renders them on control planes only).
pub async fn bootstrap_manifests(
    client: &TalosClient,
) -> Result<Vec<serde_json::Value>, TalosError> {
    let (ns, ty) = MANIFESTS;
    let mut resources = client.cosi_list(ns, ty).await?;
    // Sorted here too, so the order does not rest on the server's listing order.
    resources.sort_by(|a, b| {
        let id = |r: &super::proto::cosi::Resource| {
            r.metadata
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default()
        };
        id(a).cmp(&id(b))
    });
    let mut objects = Vec::new();
    for r in resources {
        let id = r
            .metadata
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        let yaml = r.spec.map(|s| s.yaml_spec).unwrap_or_default();
        let items = spec_objects(&yaml).map_err(|e| TalosError::Malformed {
            addr: client.addr(),
            method: super::proto::paths::COSI_LIST,
            message: format!("Manifest {id}: {e}"),
        })?;
        objects.extend(items);
    }
    Ok(objects)
}

/// A Manifest's YAML spec: a list of Kubernetes objects (an empty spec is no objects).
pub fn spec_objects(yaml_spec: &str) -> Result<Vec<serde_json::Value>, String> {
    if yaml_spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<serde_json::Value> = serde_yaml::from_str(yaml_spec)
        .map_err(|e| format!("spec is not a list of objects: {e}"))?;
    match items.iter().position(|o| !o.is_object()) {
        Some(i) => Err(format!("item {i} is not an object")),
        None => Ok(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_the_list_of_objects() {
        // As `talosctl get manifests 10-kube-proxy -o yaml` prints a spec (trimmed).
        let spec = "- apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: kube-proxy\n    namespace: kube-system\n\
                    - apiVersion: rbac.authorization.k8s.io/v1\n  kind: ClusterRoleBinding\n  metadata:\n    name: kube-proxy\n";
        let objects = spec_objects(spec).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["kind"], "ServiceAccount");
        assert_eq!(objects[1]["metadata"]["name"], "kube-proxy");
        assert!(spec_objects("").unwrap().is_empty());
        assert!(spec_objects("kind: ServiceAccount\n").is_err());
        assert!(spec_objects("- 3\n").is_err());
    }
}
