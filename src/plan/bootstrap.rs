//! Whether to bootstrap etcd now (DESIGN §4 "Bootstrap"), from what each control plane answered. Pure:
//! the worker gathers the answers, this decides.
//!
//! Bootstrap is the one action that can split a cluster (a second etcd), and Talos's own guard —
//! `AlreadyExists` — only says that *this* node's etcd data directory is not empty. So kiln looks at
//! every control plane first. On real Talos `EtcdMemberList` before bootstrap never answers "no
//! members": it fails `Unknown` (no control-plane endpoint yet, no etcd client certificates) or waits
//! until the caller's deadline (siderolabs/talos v1.13.9 `v1alpha1_server.go` `EtcdMemberList` →
//! `internal/pkg/etcd/endpoints.go` `GetEndpoints`); those mean "no etcd reachable here".

/// What EtcdMemberList (with its short deadline) said on one control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberProbe {
    /// The list came back with this many members.
    Listed(usize),
    /// gRPC `Unknown`: no endpoints discovered yet, or no etcd client certificates.
    Unknown,
    /// The deadline passed (the node's `DeadlineExceeded`, or kiln's own wait ran out).
    Deadline,
    /// gRPC `Unavailable`.
    Unavailable,
    /// Anything else: kiln cannot tell.
    Other(String),
}

/// One control plane, as the worker saw it just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAnswer {
    pub name: String,
    /// `Err(why)`: not configured, or not answering over mTLS.
    pub configured: Result<(), String>,
    /// ServiceList's `etcd` entry is `Running`; `Err(why)` when ServiceList failed.
    pub etcd_running: Result<bool, String>,
    pub members: MemberProbe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapDecision {
    /// The marker is there, or some control plane shows etcd: write the marker, never bootstrap.
    AlreadyThere(String),
    /// Something is not known yet: look again soon.
    Wait(String),
    /// Every control plane answered and none shows etcd: bootstrap the first one.
    Bootstrap,
}

/// DESIGN §4, in order: the marker; every control plane configured and answering; etcd running or
/// members listed anywhere; only then a bootstrap.
pub fn decide(marker: bool, answers: &[ControlPlaneAnswer]) -> BootstrapDecision {
    if marker {
        return BootstrapDecision::AlreadyThere("the bootstrap marker is set".into());
    }
    if answers.is_empty() {
        return BootstrapDecision::Wait("the intent names no control plane".into());
    }
    for a in answers {
        if let Err(why) = &a.configured {
            return BootstrapDecision::Wait(format!(
                "waiting for {} to run its config and answer over mTLS before bootstrapping etcd ({why})",
                a.name
            ));
        }
    }
    for a in answers {
        match &a.etcd_running {
            Ok(true) => {
                return BootstrapDecision::AlreadyThere(format!("etcd runs on {}", a.name));
            }
            Ok(false) => {}
            Err(why) => {
                return BootstrapDecision::Wait(format!(
                    "cannot tell whether etcd runs on {}: ServiceList: {why}",
                    a.name
                ));
            }
        }
        match &a.members {
            MemberProbe::Listed(n) if *n > 0 => {
                return BootstrapDecision::AlreadyThere(format!(
                    "{} lists {n} etcd member(s)",
                    a.name
                ));
            }
            MemberProbe::Listed(_)
            | MemberProbe::Unknown
            | MemberProbe::Deadline
            | MemberProbe::Unavailable => {}
            MemberProbe::Other(why) => {
                return BootstrapDecision::Wait(format!(
                    "cannot tell whether etcd runs on {}: EtcdMemberList: {why}",
                    a.name
                ));
            }
        }
    }
    BootstrapDecision::Bootstrap
}

/// What the Bootstrap call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapReply {
    Ok,
    /// This node's etcd data directory is not empty.
    AlreadyExists,
    /// "bootstrap is not available yet", "time is not in sync yet".
    FailedPrecondition(String),
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBootstrap {
    WriteMarker,
    /// Transient: try again soon, without counting a failure.
    Wait(String),
    Fail(String),
}

pub fn after_bootstrap(reply: BootstrapReply) -> AfterBootstrap {
    match reply {
        BootstrapReply::Ok | BootstrapReply::AlreadyExists => AfterBootstrap::WriteMarker,
        BootstrapReply::FailedPrecondition(m) => {
            AfterBootstrap::Wait(format!("the node is not ready to bootstrap etcd yet: {m}"))
        }
        BootstrapReply::Other(m) => AfterBootstrap::Fail(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(name: &str, members: MemberProbe) -> ControlPlaneAnswer {
        ControlPlaneAnswer {
            name: name.into(),
            configured: Ok(()),
            etcd_running: Ok(false),
            members,
        }
    }

    fn three(third: MemberProbe) -> Vec<ControlPlaneAnswer> {
        vec![
            cp("c-cp-1", MemberProbe::Deadline),
            cp("c-cp-2", MemberProbe::Unknown),
            cp("c-cp-3", third),
        ]
    }

    #[test]
    fn unknown_deadline_and_unavailable_mean_no_etcd_here() {
        for probe in [
            MemberProbe::Unknown,
            MemberProbe::Deadline,
            MemberProbe::Unavailable,
        ] {
            assert_eq!(
                decide(false, &three(probe.clone())),
                BootstrapDecision::Bootstrap,
                "{probe:?}"
            );
        }
    }

    #[test]
    fn listed_members_anywhere_mean_etcd_exists() {
        assert!(matches!(
            decide(false, &three(MemberProbe::Listed(2))),
            BootstrapDecision::AlreadyThere(m) if m.contains("c-cp-3")
        ));
    }

    #[test]
    fn a_running_etcd_service_means_etcd_exists() {
        let mut answers = three(MemberProbe::Deadline);
        answers[1].etcd_running = Ok(true);
        assert!(matches!(
            decide(false, &answers),
            BootstrapDecision::AlreadyThere(m) if m.contains("c-cp-2")
        ));
    }

    #[test]
    fn the_marker_wins_over_everything() {
        let mut answers = three(MemberProbe::Deadline);
        answers[0].configured = Err("unreachable".into());
        assert!(matches!(
            decide(true, &answers),
            BootstrapDecision::AlreadyThere(_)
        ));
    }

    #[test]
    fn a_control_plane_not_answering_means_wait() {
        let mut answers = three(MemberProbe::Deadline);
        answers[2].configured = Err("connection refused".into());
        assert!(matches!(
            decide(false, &answers),
            BootstrapDecision::Wait(m) if m.contains("c-cp-3") && m.contains("connection refused")
        ));
        let mut answers = three(MemberProbe::Deadline);
        answers[0].etcd_running = Err("permission denied".into());
        assert!(matches!(
            decide(false, &answers),
            BootstrapDecision::Wait(_)
        ));
        assert!(matches!(
            decide(false, &three(MemberProbe::Other("Internal".into()))),
            BootstrapDecision::Wait(_)
        ));
        assert!(matches!(decide(false, &[]), BootstrapDecision::Wait(_)));
    }

    #[test]
    fn failed_precondition_is_transient_and_already_exists_writes_the_marker() {
        assert!(matches!(
            after_bootstrap(BootstrapReply::FailedPrecondition(
                "time is not in sync yet".into()
            )),
            AfterBootstrap::Wait(m) if m.contains("time is not in sync yet")
        ));
        assert_eq!(
            after_bootstrap(BootstrapReply::AlreadyExists),
            AfterBootstrap::WriteMarker
        );
        assert_eq!(
            after_bootstrap(BootstrapReply::Ok),
            AfterBootstrap::WriteMarker
        );
        assert!(matches!(
            after_bootstrap(BootstrapReply::Other("boom".into())),
            AfterBootstrap::Fail(_)
        ));
    }
}
