//! The wait between two control planes joining a running etcd (`plan::join`): the one just added must
//! be a voting member in another member's list and its Kubernetes Node Ready by name before the next
//! VM is created (DESIGN §4). Talos adds a joining member as a learner and promotes it once it has
//! caught up (siderolabs/talos v1.13 `internal/app/machined/pkg/system/services/etcd.go`), so a
//! learner is not yet a member here.

use std::net::IpAddr;
use std::time::Duration;

use crate::reconcile::executor::{Flow, StepResult};
use crate::reconcile::turn::Turn;
use crate::talos::grpc::proto::machine::EtcdMember;

/// How long one member-list call may take: a member that does not answer in time is not a witness.
const WITNESS_DEADLINE: Duration = Duration::from_secs(5);

/// Where the joining member stands in a witness's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Membership {
    Absent,
    Learner,
    Voting,
}

pub(super) fn membership(members: &[EtcdMember], hostname: &str) -> Membership {
    match members.iter().find(|m| m.hostname == hostname) {
        None => Membership::Absent,
        Some(m) if m.is_learner => Membership::Learner,
        Some(_) => Membership::Voting,
    }
}

impl Turn<'_> {
    pub(super) async fn join_control_plane(&mut self, number: u32) -> StepResult {
        let cluster = self.cluster()?;
        let node = self.node(number)?;
        // Witnesses: the other control planes whose VMs the cycle's listing shows (one created in
        // this turn has no etcd of its own yet worth asking).
        let witnesses: Vec<_> = cluster
            .control_planes()
            .filter(|n| n.number != number && self.inventory.get(n.vmid.get()).is_some())
            .collect();
        let mut listed = None;
        let mut silent = Vec::new();
        for w in &witnesses {
            let asked = match self.talos_node(IpAddr::V4(w.ip)).await {
                Ok(talos) => talos.etcd_members_within(WITNESS_DEADLINE).await,
                Err(e) => {
                    silent.push(format!("{}: {e}", w.name));
                    continue;
                }
            };
            match asked {
                Ok(members) => {
                    listed = Some((w.name.clone(), members));
                    break;
                }
                Err(e) => silent.push(format!("{}: {e}", w.name)),
            }
        }
        let Some((witness, members)) = listed else {
            return Ok(Flow::Wait(format!(
                "{} waits to be seen in etcd: no other control plane lists the members ({})",
                node.name,
                if silent.is_empty() {
                    "none is listed in Proxmox".to_owned()
                } else {
                    silent.join("; ")
                }
            )));
        };
        match membership(&members, &node.name) {
            Membership::Absent => {
                return Ok(Flow::Wait(format!(
                    "{} is not an etcd member yet ({witness} lists {}); the next control plane waits",
                    node.name,
                    members.len()
                )));
            }
            Membership::Learner => {
                return Ok(Flow::Wait(format!(
                    "{} is an etcd learner that Talos has not promoted yet; the next control plane waits",
                    node.name
                )));
            }
            Membership::Voting => {}
        }
        let Some(kube) = self.kube().await else {
            return Ok(Flow::Wait(format!(
                "{} is an etcd member; waiting for the Kubernetes API to see its Node",
                node.name
            )));
        };
        let readiness = kube
            .node_readiness(std::slice::from_ref(&node.name))
            .await?;
        if !readiness.all_ready() {
            return Ok(Flow::Wait(format!(
                "{} is an etcd member but its Node is not Ready yet; the next control plane waits",
                node.name
            )));
        }
        self.say(format!(
            "{} joined etcd (a voting member, as {witness} lists it) and is Ready",
            node.name
        ));
        Ok(Flow::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, learner: bool) -> EtcdMember {
        EtcdMember {
            id: 7,
            hostname: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    #[test]
    fn a_learner_is_not_yet_a_member_and_a_missing_name_is_absent() {
        let list = [member("p-cp-1", false), member("p-cp-2", true)];
        assert_eq!(membership(&list, "p-cp-1"), Membership::Voting);
        assert_eq!(membership(&list, "p-cp-2"), Membership::Learner);
        assert_eq!(membership(&list, "p-cp-3"), Membership::Absent);
    }
}
