//! Awaiting a PVE task (UPID) to its end (DESIGN.md §3 "Tasks").

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::client::Api;
use super::error::ProxmoxError;

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
    Err(ProxmoxError::TaskFailed {
        upid: upid.to_owned(),
        status: exit.to_owned(),
        log_tail,
    })
}

const LOG_TAIL: usize = 10;

/// Polls the task until it stops or `deadline` passes. Polling starts fast (most tasks on an idle
/// node end within a second) and slows to every 2 s for minute-long clones.
pub async fn wait(api: &Api, upid: &str, deadline: Duration) -> Result<TaskOutcome, ProxmoxError> {
    let node = upid_node(upid)?;
    let status_path = format!("/nodes/{node}/tasks/{upid}/status");
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(50);
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
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
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
}
