//! What a Kubernetes upgrade waits on, read as `talosctl upgrade-k8s` reads it (v1.13.9
//! `pkg/cluster/kubernetes/kubelet.go` `checkNodeKubeletVersion`: the Node's
//! `status.nodeInfo.kubeletVersion`; `talos_managed.go` `checkPodStatus`: the static pod's mirror pod
//! in `kube-system`, Ready).

use std::collections::BTreeMap;

use ::kube::api::{Api, ListParams};
use k8s_openapi::api::core::v1::Pod;

use super::{KubeClient, KubeError};

impl KubeClient {
    pub(super) async fn list_kubelet_versions(
        &self,
    ) -> Result<BTreeMap<String, String>, KubeError> {
        let list = self
            .nodes()
            .list(&ListParams::default())
            .await
            .map_err(KubeError::api("list nodes"))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name?;
                let version = n.status?.node_info?.kubelet_version;
                Some((name, version))
            })
            .collect())
    }

    pub(super) async fn get_pod_image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, bool)>, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let Some(pod) = pods
            .get_opt(name)
            .await
            .map_err(KubeError::api(format!("get pod {namespace}/{name}")))?
        else {
            return Ok(None);
        };
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(Some((image, ready)))
    }
}
