//! The deep look at the Talos versions the nodes run (for `plan::upgrade`): `Version` over mTLS on
//! every configured node, and etcd's member count from the first control plane that lists it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::plan::NodeState;
use crate::spec::{Node, Version};
use crate::talos::grpc::{ClientIdentity, TalosPort};

/// A member list before bootstrap waits until the deadline on a real node (DESIGN §4): keep it short.
const ETCD_DEADLINE: Duration = Duration::from_secs(5);

/// The Talos version of each configured node that answers; a node that does not answer (or reports
/// a tag kiln cannot read) is left out, so nothing is planned for it from a guess.
pub async fn running(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    nodes: &[&Node],
    states: &BTreeMap<u32, NodeState>,
) -> BTreeMap<u32, Version> {
    let asks = nodes
        .iter()
        .filter(|n| states.get(&n.number) == Some(&NodeState::Configured))
        .map(|n| async move {
            let node = talos.connect(IpAddr::V4(n.ip), identity).await.ok()?;
            let tag = node.running_version().await.ok()?;
            Some((n.number, tag.parse::<Version>().ok()?))
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How many members etcd lists, asked of the configured control planes in order until one answers.
pub async fn etcd_members(
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    control_planes: &[&Node],
    states: &BTreeMap<u32, NodeState>,
) -> Option<usize> {
    for cp in control_planes
        .iter()
        .filter(|n| states.get(&n.number) == Some(&NodeState::Configured))
    {
        let Ok(node) = talos.connect(IpAddr::V4(cp.ip), identity).await else {
            continue;
        };
        if let Ok(members) = node.etcd_members_within(ETCD_DEADLINE).await {
            return Some(members.len());
        }
    }
    None
}
