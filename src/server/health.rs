//! `/healthz` (the process answers), `/readyz` (the engine cycles and Git is readable) and `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;

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

/// Ready when a cycle finished recently (within three poll intervals, at least a minute) and the
/// last fetch of the remote worked. 503 otherwise, with the reasons, so a forge that is down shows
/// here rather than as a dead process.
async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.view.health();
    let window = (state.config.git.poll_interval * 3).max(Duration::from_secs(60));
    let mut problems = Vec::new();
    // A follower runs no cycles (DESIGN §8): it is ready when it can serve status.
    let following = health.ha.as_ref().is_some_and(|h| h.role == "follower");
    match health.last_cycle {
        _ if following => {}
        None => problems.push("no reconcile cycle has finished yet".to_owned()),
        Some((at, _)) if at.elapsed() > window => problems.push(format!(
            "no reconcile cycle has finished for {}",
            humantime::format_duration(Duration::from_secs(at.elapsed().as_secs()))
        )),
        Some(_) => {}
    }
    if let Some(e) = &health.git_error {
        problems.push(format!("git is unreachable: {e}"));
    }
    let ready = problems.is_empty();
    let body = json!({
        "ready": ready,
        "git": if health.git_error.is_none() && health.git_ever_read { "ok" } else { "unreachable" },
        "last_cycle": health.last_cycle.map(|(_, t)| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()),
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

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::global().render(),
    )
        .into_response()
}
