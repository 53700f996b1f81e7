//! The mirror pods of a control plane's static pods (kube-apiserver, kube-controller-manager,
//! kube-scheduler), which the kubelet posts for the manifests Talos writes from the machine config.
//! Labels as Talos gives them (`tier: control-plane`, `k8s-app`, `component`, `app.kubernetes.io/…`:
//! Talos `internal/app/machined/pkg/controllers/k8s/control_plane_static_pod.go`); the kubelet's
//! mirror annotations and its Node as controller (`pkg/kubelet/pod/mirror_client.go`). Drains leave
//! them alone, as kubectl's and kiln's do; a new image replaces the pod, so an upgrade of the control
//! plane shows node by node.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::KubeSimState;
use super::store::{ObjectKey, timestamp};
use super::workloads;

impl KubeSimState {
    /// Posts (or replaces, when its image changed) the mirror pod of each `(component, image)` static
    /// pod of `node`.
    pub fn put_static_pods(&mut self, node: &str, pods: &[(String, String)]) {
        let Some(sim_node) = self.nodes.get(node).cloned() else {
            return;
        };
        let node_uid = super::nodes::node_json(node, &sim_node)
            .pointer("/metadata/uid")
            .cloned()
            .unwrap_or(json!(""));
        for (component, image) in pods {
            let name = format!("{component}-{node}");
            let key = ObjectKey::pod("kube-system", &name);
            let current = self
                .objects
                .get(&key)
                .and_then(|p| p.pointer("/spec/containers/0/image"))
                .and_then(Value::as_str);
            if current == Some(image.as_str()) {
                continue;
            }
            let hash = hex::encode(
                &Sha256::digest(format!("{node}/{component}/{image}").as_bytes())[..16],
            );
            let version = image.rsplit_once(':').map_or("", |(_, tag)| tag);
            let rv = self.next_revision();
            let spec = json!({
                "nodeName": node,
                "hostNetwork": true,
                "priorityClassName": "system-cluster-critical",
                "tolerations": [{ "operator": "Exists" }],
                "containers": [{ "name": component, "image": image }],
            });
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": "kube-system",
                    "labels": {
                        "tier": "control-plane", "k8s-app": component, "component": component,
                        "app.kubernetes.io/name": component,
                        "app.kubernetes.io/version": version,
                        "app.kubernetes.io/component": "control-plane",
                        "app.kubernetes.io/managed-by": "Talos",
                    },
                    "annotations": {
                        "kubernetes.io/config.hash": hash,
                        "kubernetes.io/config.mirror": hash,
                        "kubernetes.io/config.source": "file",
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
                        "controller": true,
                    }],
                    "uid": format!("6b696c6e-0000-4000-8000-{rv:012x}"),
                    "resourceVersion": rv.to_string(),
                    "creationTimestamp": timestamp(std::time::SystemTime::now()),
                },
                "status": workloads::running_status(&sim_node, &spec),
                "spec": spec,
            });
            self.objects.insert(key, pod);
        }
        workloads::reconcile(self);
    }
}

#[cfg(test)]
mod tests {
    use super::super::SimNode;
    use super::*;

    #[test]
    fn a_new_image_replaces_the_mirror_pod_and_drains_leave_it() {
        let mut s = KubeSimState::default();
        s.put_node(
            "cp-1",
            SimNode {
                ready: true,
                role: "control-plane".into(),
                ..SimNode::default()
            },
        );
        let pods = |v: &str| {
            vec![(
                "kube-apiserver".to_owned(),
                format!("registry.k8s.io/kube-apiserver:{v}"),
            )]
        };
        s.put_static_pods("cp-1", &pods("v1.34.1"));
        let key = ObjectKey::pod("kube-system", "kube-apiserver-cp-1");
        let first = s.objects[&key].clone();
        assert_eq!(first["status"]["phase"], "Running");
        assert!(
            first
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some()
        );
        s.put_static_pods("cp-1", &pods("v1.34.1"));
        assert_eq!(
            s.objects[&key], first,
            "an unchanged manifest leaves the pod alone"
        );
        s.put_static_pods("cp-1", &pods("v1.35.0"));
        assert_eq!(
            s.objects[&key]["spec"]["containers"][0]["image"],
            "registry.k8s.io/kube-apiserver:v1.35.0"
        );
        assert_ne!(s.objects[&key]["metadata"]["uid"], first["metadata"]["uid"]);
        // Its Node gone, the mirror pod goes too.
        s.nodes.remove("cp-1");
        workloads::reconcile(&mut s);
        assert!(!s.objects.contains_key(&key));
    }
}
