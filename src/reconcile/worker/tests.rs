//! How the end of a run maps onto the status and what the engine does next.

use std::time::{Duration, Instant};

use super::*;
use crate::reconcile::error::Refusal;
use crate::spec::Vmid;

fn create() -> Action {
    Action::CreateVm {
        number: 1,
        role: crate::spec::Role::ControlPlane,
        vmid: Vmid::new(401).unwrap(),
        name: "a-cp-1".into(),
        pve_node: "pve1".into(),
        template: Vmid::new(9000).unwrap(),
    }
}

fn end(execution: Execution) -> Outcome {
    let status = ClusterStatus::continued("a", None);
    unfinished_outcome(
        Duration::from_secs(7),
        status,
        ClusterRecord::default(),
        execution,
        |_| Phase::Provisioning,
    )
}

#[test]
fn a_refusal_is_blocked_and_settled_with_its_cause() {
    let o = end(Execution::Blocked {
        action: create(),
        refusal: Refusal::ForeignVm,
        why: "VMID 401 holds a VM that is not this kiln node's".into(),
    });
    assert_eq!(o.status.phase, Phase::Blocked);
    assert_eq!(o.next, Next::Stuck { recheck: None });
    assert!(o.settled() && !o.converged());
    let blocked = o.status.conditions.iter().find(|c| c.kind == "Blocked");
    assert_eq!(blocked.map(|c| c.reason.as_str()), Some("ForeignVm"));
    let error = o.status.last_error.unwrap_or_default();
    assert!(error.starts_with("create-vm 401: VMID 401"), "{error}");
    assert!(o.status.retry_at.is_none());
}

#[test]
fn a_failure_backs_off_and_says_when_it_retries() {
    let until = Instant::now() + Duration::from_secs(60);
    let o = end(Execution::BackingOff {
        action: create(),
        error: "VM 401 is locked (clone)".into(),
        until,
        failures: 1,
    });
    assert_eq!(o.status.phase, Phase::Provisioning);
    assert!(!o.settled());
    assert!(o.wake_in().is_some_and(|w| w <= Duration::from_secs(60)));
    assert!(o.status.retry_at.is_some());
}

#[test]
fn giving_up_is_failed_and_settled() {
    let o = end(Execution::Failed {
        action: create(),
        error: "VM 401 is locked (clone)".into(),
        failures: 5,
    });
    assert_eq!(o.status.phase, Phase::Failed);
    assert!(o.settled() && !o.converged());
    assert_eq!(o.wake_in(), None);
}

#[test]
fn a_wait_comes_back_after_the_wait_interval_without_an_error() {
    let o = end(Execution::Waiting {
        action: create(),
        why: "booting".into(),
    });
    assert_eq!(o.next, Next::Requeue(Duration::from_secs(7)));
    assert!(o.status.last_error.is_none());
    assert!(!o.settled());
}

#[test]
fn next_says_settled_converged_and_when() {
    assert!(Next::Converged.settled() && Next::Converged.converged());
    assert!(Next::Forget.settled() && Next::Forget.converged());
    let held = Next::Stuck {
        recheck: Some(Duration::from_secs(5)),
    };
    assert!(held.settled() && !held.converged());
    assert_eq!(held.wake_in(), Some(Duration::from_secs(5)));
    assert!(!Next::Interrupted.settled() && Next::Interrupted.wake_in().is_none());
    assert_eq!(
        Next::Requeue(Duration::from_secs(2)).wake_in(),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn a_store_that_denies_kiln_is_blocked_and_one_that_is_down_is_looked_at_again() {
    let mut status = ClusterStatus::continued("a", None);
    let denied: TurnError = crate::secrets::SecretsError::Auth {
        path: "kv/kiln/a/secrets".into(),
        message: "permission denied".into(),
    }
    .into();
    let next = observation_failed(&mut status, &denied, Duration::from_secs(10));
    assert_eq!(next, Next::Stuck { recheck: None });
    assert_eq!(status.phase, Phase::Blocked);
    let blocked = status.conditions.iter().find(|c| c.kind == "Blocked");
    assert_eq!(blocked.map(|c| c.reason.as_str()), Some("MissingPrivilege"));

    let mut status = ClusterStatus::continued("a", None);
    let sealed: TurnError = crate::secrets::SecretsError::Sealed {
        addr: "https://bao:8200".into(),
    }
    .into();
    let next = observation_failed(&mut status, &sealed, Duration::from_secs(10));
    assert_eq!(next, Next::Requeue(Duration::from_secs(10)));
    assert_ne!(status.phase, Phase::Blocked);
    assert!(status.last_error.is_some_and(|e| e.contains("sealed")));
}
