//! `/healthz` (the process answers), `/readyz` (the engine cycles and Git is readable) and `/metrics`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{AppState, Health};

pub fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub fn protected_routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the loop is alive and Git was readable. Alive: a cycle runs now (a rolling upgrade
/// keeps one cycle running for an hour; that is work, not a stall, and turning the daemon not-ready
/// for it would page someone for nothing) or one finished within three poll intervals (at least a
/// minute). Git: the last cycle fetched the remote. 503 otherwise, with the reasons, so a forge that
/// is down shows here rather than as a dead process; `/healthz` and `/metrics` keep answering.
async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.view.health();
    let window = (state.config.git.poll_interval * 3).max(Duration::from_secs(60));
    let problems = problems(&health, window, Instant::now());
    let ready = problems.is_empty();
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let body = json!({
        "ready": ready,
        "git": if health.git_error.is_none() && health.git_ever_read { "ok" } else { "unreachable" },
        "last_cycle": health.last_cycle.map(|(_, t)| rfc3339(t)),
        "cycle_running_since": health.cycle_running_since.map(|(_, t)| rfc3339(t)),
        "problems": problems,
        "role": health.ha.as_ref().map(|h| h.role),
        "leader": health.ha.as_ref().and_then(|h| h.leader.clone()),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Why the daemon is not ready (none: ready), as of `now`.
fn problems(health: &Health, window: Duration, now: Instant) -> Vec<String> {
    let mut problems = Vec::new();
    let ago = |at: Instant| {
        humantime::format_duration(Duration::from_secs(now.duration_since(at).as_secs()))
    };
    // A follower runs no cycles (DESIGN §8): it is ready when it can serve status.
    let following = health.ha.as_ref().is_some_and(|h| h.role == "follower");
    match (health.last_cycle, health.cycle_running_since) {
        _ if following => {}
        // The first cycle has to finish before anything is known to work, however it goes.
        (None, _) => problems.push("no reconcile cycle has finished yet".to_owned()),
        // A cycle at work is alive however long it takes; its steps have their own budgets.
        (Some(_), Some(_)) => {}
        (Some((at, _)), None) if now.duration_since(at) > window => problems.push(format!(
            "no reconcile cycle has finished for {} (expected every {})",
            ago(at),
            humantime::format_duration(window / 3)
        )),
        (Some(_), None) => {}
    }
    match &health.git_error {
        Some(e) => problems.push(format!("git is unreachable: {e}")),
        None if !health.git_ever_read && health.last_cycle.is_some() => {
            problems.push("git is unreachable: no fetch has worked yet".to_owned())
        }
        None => {}
    }
    problems
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), the classic text format (0.0.4)
/// for anyone else (`curl`, `promtool check metrics`).
async fn metrics(headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let m = crate::metrics::global();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m.render_classic(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(90);

    fn finished(at: Instant) -> Health {
        Health {
            last_cycle: Some((at, time::OffsetDateTime::UNIX_EPOCH)),
            git_error: None,
            git_ever_read: true,
            cycle_running_since: None,
            ha: None,
        }
    }

    #[test]
    fn a_follower_runs_no_cycles_and_is_ready() {
        let t0 = Instant::now();
        let follower = Health {
            ha: Some(super::super::HaRole {
                role: "follower",
                leader: Some("pve1_42".into()),
            }),
            ..Health::default()
        };
        assert!(problems(&follower, WINDOW, t0).is_empty());
        // The same instance as a leader that never finished a cycle is not ready.
        let leader = Health {
            ha: Some(super::super::HaRole {
                role: "leader",
                leader: None,
            }),
            ..Health::default()
        };
        assert_eq!(problems(&leader, WINDOW, t0).len(), 1);
    }

    #[test]
    fn a_recent_cycle_with_git_read_is_ready_and_a_stale_one_is_not() {
        let t0 = Instant::now();
        assert!(problems(&finished(t0), WINDOW, t0 + Duration::from_secs(60)).is_empty());
        let p = problems(&finished(t0), WINDOW, t0 + Duration::from_secs(120));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("no reconcile cycle has finished for 2m"),
            "{p:?}"
        );
    }

    #[test]
    fn a_long_cycle_keeps_the_daemon_ready() {
        let t0 = Instant::now();
        let mut h = finished(t0);
        h.cycle_running_since = Some((
            t0 + Duration::from_secs(1),
            time::OffsetDateTime::UNIX_EPOCH,
        ));
        assert!(problems(&h, WINDOW, t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn git_unreachable_is_named() {
        let t0 = Instant::now();
        let mut h = finished(t0);
        h.git_error = Some("git: connection refused".into());
        h.git_ever_read = false;
        let p = problems(&h, WINDOW, t0);
        assert_eq!(
            p,
            vec!["git is unreachable: git: connection refused".to_owned()]
        );
        let mut first_running = Health::default();
        assert_eq!(
            problems(&first_running, WINDOW, t0),
            vec!["no reconcile cycle has finished yet".to_owned()]
        );
        // The first cycle, still running, has not shown anything works yet.
        first_running.cycle_running_since = Some((t0, time::OffsetDateTime::UNIX_EPOCH));
        assert_eq!(
            problems(&first_running, WINDOW, t0 + Duration::from_secs(1)),
            vec!["no reconcile cycle has finished yet".to_owned()]
        );
    }
}
