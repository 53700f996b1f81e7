//! Steps that drive the cluster's Kubernetes API: health (every node kiln expects is Ready by name),
//! and lifting a cordon of kiln's that its step left behind.

use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::turn::Turn;

impl Turn<'_> {
    /// The observation saw the node Ready and cordoned by kiln; looked at again here, as the step
    /// may run a while after it (a person may have uncordoned it, or cordoned it for their own
    /// reasons — then kiln's mark is gone and the cordon is theirs).
    pub(super) async fn uncordon(&mut self, name: &str) -> StepResult {
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(
                "waiting for the Kubernetes API to answer".to_owned(),
            ));
        };
        let r = kube.node_readiness(&[name.to_owned()]).await?;
        if r.cordoned_by_kiln.iter().any(|n| n == name) {
            kube.set_unschedulable(name, false).await?;
            self.say(format!(
                "uncordoned {name}: kiln's cordon outlived the step that made it"
            ));
        }
        Ok(Flow::Done)
    }

    pub(super) async fn wait_healthy(&mut self) -> StepResult {
        let cluster = self.cluster()?;
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(
                "waiting for the Kubernetes API to answer".to_owned(),
            ));
        };
        let expected: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let r = kube.node_readiness(&expected).await?;
        if r.all_ready() {
            // A node on another Talos than the spec's is not Ready yet (DESIGN §4).
            if let Some(why) = self.version_mismatch(cluster).await {
                return Ok(Flow::Wait(why));
            }
            // Nor one whose kubelet runs another Kubernetes than the spec's.
            let want = cluster.spec.kubernetes.version.to_string();
            let kubelets = kube.kubelet_versions().await?;
            if let Some((name, v)) = cluster
                .nodes
                .iter()
                .filter_map(|n| kubelets.get(&n.name).map(|v| (&n.name, v)))
                .find(|(_, v)| **v != want)
            {
                return Ok(Flow::Wait(format!(
                    "{name}'s kubelet runs {v}, not spec.kubernetes.version {want}"
                )));
            }
            if !r.extra.is_empty() {
                tracing::info!(cluster = %self.name, extra = ?r.extra, "nodes kiln does not expect");
            }
            self.say(format!("all {} nodes Ready", expected.len()));
            Ok(Flow::Done)
        } else {
            Ok(Flow::Wait(format!(
                "{} of {} nodes Ready",
                r.ready.len(),
                expected.len()
            )))
        }
    }
}
