//! A control plane joining a running etcd, as Talos does it (siderolabs/talos v1.13
//! `internal/app/machined/pkg/system/services/etcd.go`): with an empty data directory and no
//! bootstrap, `argsForControlPlane` → `buildInitialCluster` → `addMember` adds the node with
//! `MemberAddAsLearner` (retried every 3 s until it works), and `Runner` starts `promoteMember`,
//! which retries `MemberPromote` until the learner has caught up with the leader. etcd itself keeps
//! at most one learner (`--experimental-max-learners`, default 1: "too many learner members in
//! cluster"), so a second control plane's add is refused until the first one is promoted, and its
//! Talos keeps retrying.
//!
//! Here the catch-up takes `Fleet::learner_delay`; time is looked at before every simulated call
//! ([`Fleet::settle_learners`]), when the promotions that are due happen and a control plane that
//! waited takes the learner's place. A zero delay (the default) promotes a member as it is added, so
//! tests that do not look at joins are not slowed by them; `kiln sim talos --learner-delay` sets one.

use std::net::SocketAddr;
use std::time::Instant;

use super::fleet::Fleet;

/// A graceful Reset whose leave fails after the answer. Talos answers `Reset` once its checks pass
/// and runs the reset sequence afterwards (v1.13 `v1alpha1_server.go` `Reset` starts the sequence in
/// the background); when that sequence's `LeaveEtcd` task fails
/// (`internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_sequencer_tasks.go`), the sequence stops:
/// the caller got OK, the member stays listed and the node keeps running.
pub fn failed_leave(addr: SocketAddr) -> crate::talos::grpc::proto::machine::ResetResponse {
    use crate::talos::grpc::proto::machine;
    tracing::info!(node = %addr, "graceful Reset accepted; its etcd leave fails (kiln sim talos --fail-leave)");
    machine::ResetResponse {
        messages: vec![machine::ActorReply {
            metadata: None,
            actor_id: format!("{:016x}", rand::random::<u64>()),
        }],
    }
}

impl Fleet {
    /// `addMember`: adds the control plane at `addr` to `key`'s etcd as a learner. False when etcd
    /// already holds a learner (the add is refused; the node tries again later).
    pub fn add_learner(&mut self, key: &str, addr: SocketAddr) -> bool {
        let now = Instant::now();
        if self
            .clusters
            .get(key)
            .is_some_and(|c| c.members.values().any(|m| m.learner_until.is_some()))
        {
            return false;
        }
        self.add_member(key, addr);
        if self.learner_delay.is_zero() {
            // No catch-up time: promoted as it is added, as the simulator always did.
            return true;
        }
        let until = now + self.learner_delay;
        if let Some(m) = self
            .clusters
            .get_mut(key)
            .and_then(|c| c.members.values_mut().find(|m| m.addr == addr))
        {
            m.learner_until = Some(until);
            tracing::info!(node = %addr, hostname = %m.hostname, "etcd member added as a learner");
        }
        true
    }

    /// `promoteMember`: every learner whose catch-up time is over becomes a voting member, and a
    /// control plane that waited for the learner slot joins in its place.
    pub fn settle_learners(&mut self) {
        let now = Instant::now();
        let mut promoted_in = Vec::new();
        for (key, cluster) in &mut self.clusters {
            for m in cluster.members.values_mut() {
                if m.learner_until.is_some_and(|t| t <= now) {
                    m.learner_until = None;
                    tracing::info!(node = %m.addr, hostname = %m.hostname, "etcd learner promoted to a voting member");
                    promoted_in.push(key.clone());
                }
            }
        }
        for key in promoted_in {
            if self.cluster_bootstrapped(&key) {
                self.join_waiting_control_planes(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::talos::config::{MachineType, NodeConfig};
    use crate::sim::talos::fleet::{Configured, Node, Phase};

    fn control_plane(fleet: &mut Fleet, last: u8, data: bool) -> SocketAddr {
        let addr: SocketAddr = format!("127.0.0.{last}:50000").parse().unwrap();
        let cfg = NodeConfig {
            machine_type: MachineType::ControlPlane,
            os_ca_pem: String::new(),
            os_ca_key_pem: None,
            cert_sans: Vec::new(),
            hostname: Some(format!("c-cp-{last}")),
            install_image: None,
            cluster_name: "c".into(),
            cluster_key: "c".into(),
            endpoint: "https://127.0.0.100:6443".into(),
            k8s_ca_pem: None,
            k8s_ca_key_pem: None,
            has_etcd_ca: true,
            vip: None,
            kubernetes_version: None,
        };
        fleet.nodes.insert(
            addr,
            Node {
                addr,
                uuid: String::new(),
                version: "v1.13.9".into(),
                version_pinned: false,
                platform: "nocloud".into(),
                down_until: None,
                pulled: Vec::new(),
                staged: None,
                fail_upgrade: false,
                broken: false,
                installed: false,
                phase: Phase::Configured(Box::new(Configured {
                    raw: Vec::new(),
                    cfg,
                    tls: None,
                    etcd_data: data,
                    recover_snapshot: None,
                    etcd_failed: None,
                    applied_at: Instant::now(),
                })),
            },
        );
        addr
    }

    /// (hostname, learner) of every member, in member order.
    fn members(fleet: &Fleet) -> Vec<(String, bool)> {
        let mut v: Vec<_> = fleet.clusters["c"]
            .members
            .values()
            .map(|m| (m.hostname.clone(), m.learner_until.is_some()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn control_planes_join_as_learners_one_at_a_time_and_are_promoted_after_the_catch_up() {
        let mut fleet = Fleet {
            learner_delay: Duration::from_secs(3600),
            ..Fleet::default()
        };
        let first = control_plane(&mut fleet, 1, false);
        fleet.add_member("c", first);
        control_plane(&mut fleet, 2, false);
        control_plane(&mut fleet, 3, false);
        fleet.join_waiting_control_planes("c");
        assert_eq!(
            members(&fleet),
            [("c-cp-1".into(), false), ("c-cp-2".into(), true)],
            "one learner; cp-3 waits for the slot"
        );
        // The catch-up is not over: nothing changes.
        fleet.settle_learners();
        assert_eq!(members(&fleet).len(), 2);
        // cp-2's catch-up is over: it votes, and cp-3 takes the learner's place.
        let catch_up_over = |fleet: &mut Fleet| {
            for m in fleet.clusters.get_mut("c").unwrap().members.values_mut() {
                if m.learner_until.is_some() {
                    m.learner_until = Some(Instant::now());
                }
            }
        };
        catch_up_over(&mut fleet);
        fleet.settle_learners();
        assert_eq!(
            members(&fleet),
            [
                ("c-cp-1".into(), false),
                ("c-cp-2".into(), false),
                ("c-cp-3".into(), true)
            ]
        );
        catch_up_over(&mut fleet);
        fleet.settle_learners();
        assert!(members(&fleet).iter().all(|(_, learner)| !learner));
    }

    #[test]
    fn without_a_catch_up_time_every_waiting_control_plane_joins_at_once() {
        let mut fleet = Fleet::default();
        let first = control_plane(&mut fleet, 1, false);
        fleet.add_member("c", first);
        control_plane(&mut fleet, 2, false);
        control_plane(&mut fleet, 3, false);
        fleet.join_waiting_control_planes("c");
        assert_eq!(
            members(&fleet),
            [
                ("c-cp-1".into(), false),
                ("c-cp-2".into(), false),
                ("c-cp-3".into(), false)
            ]
        );
    }
}
