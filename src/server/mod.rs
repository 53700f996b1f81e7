//! The HTTP surface of `kiln run` (DESIGN §8): the API whose writes become Git commits, the Git
//! webhook, `/metrics`, `/healthz` and `/readyz`. Served only when `[api] token_file` is set, and
//! never by `run --once`.
//!
//! Invariant: nothing here changes a cluster except by a commit to the repository; the engine is
//! read through [`DaemonView`] (what its last cycle left) and woken through its [`Trigger`].

pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod openapi;
pub mod seed;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::git::{GitSource, Trigger};
use crate::reconcile::status::StatusBook;
use crate::reconcile::{CycleObserver, CycleReport};

pub use error::ApiError;

/// What the engine's cycles left, for the HTTP handlers: shared, read often, written once a cycle.
#[derive(Default)]
pub struct DaemonView {
    status: RwLock<StatusBook>,
    health: Mutex<Health>,
    /// `[ha]`: reads this instance's role and the Lease's holder when asked (`crate::ha`).
    leadership: std::sync::OnceLock<Box<dyn Fn() -> HaRole + Send + Sync>>,
}

/// `[ha]`: this instance's role and who holds the Lease, as last read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HaRole {
    /// `leader` or `follower`.
    pub role: &'static str,
    pub leader: Option<String>,
}

/// The daemon's own health, as `/readyz` reports it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// When the last cycle finished (monotonic, for "recently"), and its wall time (for people).
    pub last_cycle: Option<(Instant, OffsetDateTime)>,
    /// Why the last cycle could not fetch the remote; `None` once a fetch worked.
    pub git_error: Option<String>,
    /// Whether any fetch has worked since start.
    pub git_ever_read: bool,
    /// When the cycle running now started; `None` between cycles.
    pub cycle_running_since: Option<(Instant, OffsetDateTime)>,
    /// With `[ha]`: this instance's role now.
    pub ha: Option<HaRole>,
}

impl DaemonView {
    /// Starts from the status the previous run left on disk, so `GET …/status` answers at once.
    pub fn new(status: StatusBook) -> Self {
        Self {
            status: RwLock::new(status),
            health: Mutex::new(Health::default()),
            leadership: std::sync::OnceLock::new(),
        }
    }

    /// `[ha]`: where [`Health::ha`] is read from.
    pub fn set_leadership(&self, read: Box<dyn Fn() -> HaRole + Send + Sync>) {
        let _ = self.leadership.set(read);
    }

    pub fn status(&self) -> StatusBook {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn health(&self) -> Health {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        health.ha = self.leadership.get().map(|read| read());
        health
    }
}

impl CycleObserver for DaemonView {
    fn cycle_started(&self) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cycle_running_since = Some((Instant::now(), OffsetDateTime::now_utc()));
        crate::metrics::global().cycle_started();
    }

    fn cycle_done(&self, report: &CycleReport, status: &StatusBook, took: Duration) {
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = status.clone();
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            h.last_cycle = Some((Instant::now(), OffsetDateTime::now_utc()));
            h.git_error.clone_from(&report.git_error);
            h.git_ever_read |= report.git_error.is_none();
            h.cycle_running_since = None;
        }
        crate::metrics::global().cycle_done(report.error.is_none(), took, status);
    }
}

/// A secret read from a `*_file` key, compared in constant time and never printed.
#[derive(Clone)]
pub struct SecretBytes(Arc<[u8]>);

impl SecretBytes {
    pub fn new(bytes: &[u8]) -> Self {
        Self(Arc::from(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(…)")
    }
}

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub git: GitSource,
    /// Wakes the engine for a poll at once (a write through the API, a webhook).
    pub trigger: Trigger,
    pub view: Arc<DaemonView>,
    pub token: SecretBytes,
    pub webhook_secret: Option<SecretBytes>,
}

/// Every route. `/healthz`, `/readyz` and the webhook (HMAC-verified) are open; everything else
/// needs the bearer token.
pub fn router(state: AppState) -> Router {
    crate::metrics::global().set_poll_interval(state.config.git.poll_interval);
    let protected = Router::new()
        .merge(health::protected_routes())
        .merge(api::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .merge(health::open_routes())
        .merge(webhook::routes())
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One line per request: method, path (no query string: it could carry a token), status and time;
/// never a header or a body.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        target: "kiln::server::access",
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "http"
    );
    response
}

/// Binds the listener before anything slow runs, so systemd hears READY only once it is up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

/// The state a handler reads, for the extractors of the route modules.
pub type AppStateRef = State<AppState>;
