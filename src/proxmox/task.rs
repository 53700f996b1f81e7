//! Awaiting a PVE task (UPID) to its end (DESIGN.md §3 "Tasks").

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::Api;
use super::error::{ProxmoxError, classify};

/// How a successful task ended: `OK`, or `WARNINGS: n` (kept for the status report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Ok,
    Warnings { count: u32, log_tail: Vec<String> },
}

/// The node a UPID ran on: `UPID:<node>:…`.
pub fn upid_node(upid: &str) -> Result<&str, ProxmoxError> {
    let mut parts = upid.split(':');
    match (parts.next(), parts.next()) {
        (Some("UPID"), Some(node)) if !node.is_empty() => Ok(node),
        _ => Err(ProxmoxError::Protocol(format!("not a UPID: {upid}"))),
    }
}

pub fn upid_of(data: &Value) -> Result<String, ProxmoxError> {
    data.as_str()
        .filter(|s| s.starts_with("UPID:"))
        .map(str::to_owned)
        .ok_or_else(|| ProxmoxError::Protocol(format!("expected a task id, got {data}")))
}

/// Judges a task's exit status (pure).
pub fn judge_exit(
    upid: &str,
    exit: &str,
    log_tail: Vec<String>,
) -> Result<TaskOutcome, ProxmoxError> {
    if exit == "OK" {
        return Ok(TaskOutcome::Ok);
    }
    if let Some(Ok(count)) = exit.strip_prefix("WARNINGS: ").map(|n| n.trim().parse()) {
        return Ok(TaskOutcome::Warnings { count, log_tail });
    }
    Err(task_error(upid, exit, log_tail))
}

/// A failed task's exit status is the worker's `die` message (pve-common `src/PVE/RESTEnvironment.pm`
/// `fork_worker`: "TASK ERROR: $err", read back by `src/PVE/UPID.pm` `read_status`): the same text an
/// HTTP 500 carries when the same check runs before the fork. Where qemu-server checks is its choice
/// (`resize_vm` checks the digest, the lock and the storage privilege inside the worker), so a refusal
/// kiln knows by name is typed the same either way: a stale digest is a `Conflict`, a `lock` a
/// `Locked`, a privilege a `Permission`, a missing config `NotFound`. Anything else stays
/// `TaskFailed`, with the log's tail.
fn task_error(upid: &str, exit: &str, log_tail: Vec<String>) -> ProxmoxError {
    // A privilege checked inside a worker dies with the 403's text ("Permission check failed (…)").
    let status = if exit.starts_with("Permission check failed") {
        403
    } else {
        500
    };
    match classify(status, exit.to_owned(), upid_vmid(upid)) {
        ProxmoxError::Conflict(m) => ProxmoxError::Conflict(format!("task {upid}: {m}")),
        typed @ (ProxmoxError::Locked { .. }
        | ProxmoxError::Permission { .. }
        | ProxmoxError::NotFound(_)) => typed,
        _ => ProxmoxError::TaskFailed {
            upid: upid.to_owned(),
            status: exit.to_owned(),
            log_tail,
        },
    }
}

/// The id field of a UPID (`UPID:node:pid:pstart:starttime:type:id:user:`), when it is a VMID.
fn upid_vmid(upid: &str) -> Option<u32> {
    upid.split(':').nth(6)?.parse().ok()
}

const LOG_TAIL: usize = 10;

/// Polls the task until it stops or `deadline` passes, with [`next_pause`] between looks.
pub async fn wait(api: &Api, upid: &str, deadline: Duration) -> Result<TaskOutcome, ProxmoxError> {
    let node = upid_node(upid)?;
    let status_path = format!("/nodes/{node}/tasks/{upid}/status");
    let started = Instant::now();
    let end = started + deadline;
    loop {
        let st = api.get(&status_path, &[]).await?;
        if st.get("status").and_then(Value::as_str) == Some("stopped") {
            let exit = st
                .get("exitstatus")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            let tail = if exit == "OK" {
                Vec::new()
            } else {
                log_tail(api, node, upid).await.unwrap_or_default()
            };
            let outcome = judge_exit(upid, &exit, tail);
            if let Ok(TaskOutcome::Warnings { count, log_tail }) = &outcome {
                tracing::warn!(%upid, count, ?log_tail, "Proxmox task ended with warnings");
            }
            return outcome;
        }
        if Instant::now() >= end {
            return Err(ProxmoxError::TaskTimeout {
                upid: upid.to_owned(),
                seconds: deadline.as_secs(),
            });
        }
        crate::systemd::progress();
        tokio::time::sleep(next_pause(started.elapsed())).await;
    }
}

/// How long to wait before looking at a task again, `elapsed` after it began: a fifth of that, from
/// 50 ms (most tasks on an idle node end within a second) to 2 s (minute-long full clones). So a
/// task is seen stopped at most a fifth of its time late. Doubling the pause instead saw a 2 s clone
/// 1.15 s late (the poll after 1.55 s came at 3.15 s), which made five parallel clones take 1.29×
/// what a client polling every 100 ms needs (BENCHMARKS.md); a 40 s clone now costs about 37
/// status requests instead of 23.
fn next_pause(elapsed: Duration) -> Duration {
    (elapsed / 5).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

async fn log_tail(api: &Api, node: &str, upid: &str) -> Result<Vec<String>, ProxmoxError> {
    // The log is paged from the start; ask for a large page and keep its end.
    let v = api
        .get(
            &format!("/nodes/{node}/tasks/{upid}/log"),
            &[("start", "0".into()), ("limit", "5000".into())],
        )
        .await?;
    let lines: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("t").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let skip = lines.len().saturating_sub(LOG_TAIL);
    Ok(lines.into_iter().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each look comes at most a fifth of the task's age late, never more often than every 50 ms
    /// and never less than every 2 s; a 40 s clone is looked at a few dozen times.
    #[test]
    fn a_task_is_seen_stopped_at_most_a_fifth_of_its_time_late() {
        let mut at = Duration::ZERO;
        let mut looks = vec![at];
        while at < Duration::from_secs(40) {
            let pause = next_pause(at);
            assert!(pause >= Duration::from_millis(50) && pause <= Duration::from_secs(2));
            if at >= Duration::from_millis(250) && at <= Duration::from_secs(10) {
                assert!(
                    pause <= at / 5 + Duration::from_millis(1),
                    "{pause:?} at {at:?}"
                );
            }
            at += pause;
            looks.push(at);
        }
        assert!((25..=45).contains(&looks.len()), "{} looks", looks.len());
        // A 2 s task (a 40 PVE-second clone at time_scale 0.05) is seen within 0.4 s of its end.
        let seen = looks
            .iter()
            .find(|t| **t >= Duration::from_secs(2))
            .unwrap();
        assert!(*seen <= Duration::from_millis(2400), "{seen:?}");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(judge_exit("u", "OK", vec![]).unwrap(), TaskOutcome::Ok);
        assert!(matches!(
            judge_exit("u", "WARNINGS: 2", vec![]).unwrap(),
            TaskOutcome::Warnings { count: 2, .. }
        ));
        assert!(matches!(
            judge_exit("u", "QEMU exited with code 1", vec!["x".into()]),
            Err(ProxmoxError::TaskFailed { .. })
        ));
        assert_eq!(upid_node("UPID:pve2:0000:").unwrap(), "pve2");
        assert!(upid_node("nope").is_err());
    }

    /// qemu-server `resize_vm` runs its checks in the worker, so its refusals arrive as exit statuses.
    #[test]
    fn refusals_inside_a_task_are_typed_as_over_http() {
        let upid = "UPID:pve1:0000AB12:00ABCDEF:6750A1B2:resize:401:kiln@pve!ci:";
        assert!(matches!(
            judge_exit(upid, "checksum mismatch (file change by other user?)", vec![]),
            Err(ProxmoxError::Conflict(m)) if m.contains(upid)
        ));
        assert!(matches!(
            judge_exit(upid, "VM is locked (backup)", vec![]),
            Err(ProxmoxError::Locked { vmid: 401, ref lock }) if lock == "backup"
        ));
        assert!(matches!(
            judge_exit(upid, "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)", vec![]),
            Err(ProxmoxError::Permission { ref path, ref privilege, .. })
                if path == "/storage/local-lvm" && privilege == "Datastore.AllocateSpace"
        ));
        // The config lock's timeout stays a task failure, and a transient one.
        let lock = judge_exit(
            upid,
            "can't lock file '/var/lock/qemu-server/lock-401.conf' - got timeout",
            vec![],
        )
        .unwrap_err();
        assert!(
            matches!(lock, ProxmoxError::TaskFailed { .. }) && lock.is_transient(),
            "{lock:?}"
        );
    }
}
