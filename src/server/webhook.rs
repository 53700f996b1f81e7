//! `POST /api/v1/webhooks/git`: a forge says the repository moved, kiln polls now instead of at the
//! next tick (DESIGN §8). Open to the network, so nothing is trusted before the HMAC-SHA256 of the
//! raw body with `api.webhook_secret_file` checks out, and a good delivery only wakes the poll —
//! what kiln applies is what it then fetches, never what the body says.
//!
//! GitHub signs in `X-Hub-Signature-256: sha256=<hex>`, Gitea in `X-Gitea-Signature: <hex>`,
//! Forgejo in `X-Forgejo-Signature: <hex>` (and Gitea's too). Answers: 202 a poll was asked for,
//! 200 a ping or an event that needs none, 401 no or a wrong signature, 404 no secret configured,
//! 413 a body over 1 MiB (refused before reading past it), 429 over ten polls a minute.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use futures::StreamExt;
use serde_json::json;

use super::{ApiError, AppState, SecretBytes};
use crate::metrics::Delivery;

pub const PATH: &str = "/api/v1/webhooks/git";

/// Push payloads are a few KiB; a forge caps them far above this, but kiln reads none of it but the
/// signature's input, so anything larger is refused rather than hashed.
pub const MAX_BODY: usize = 1024 * 1024;

/// Polls a minute the webhook may cause: a forge replaying deliveries, or someone who holds the
/// secret, cannot make kiln hammer the remote.
pub const POLLS_PER_MINUTE: u32 = 10;

pub fn routes() -> Router<AppState> {
    let limiter = Arc::new(Mutex::new(TokenBucket::new(
        POLLS_PER_MINUTE,
        Duration::from_secs(60),
        Instant::now(),
    )));
    Router::new()
        .route(PATH, post(deliver))
        .layer(Extension(limiter))
}

/// A token bucket: `capacity` tokens, one more every `period / capacity`. The clock is the
/// caller's, so it is tested without waiting.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_token: Duration,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, period: Duration, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_token: period.div_f64(capacity),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.per_token.as_secs_f64()).min(self.capacity);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.per_token.mul_f64(1.0 - self.tokens))
        }
    }
}

/// The signature a delivery carries, decoded; `None` when it has none kiln knows or it is not hex.
fn signature(headers: &HeaderMap) -> Option<Vec<u8>> {
    let github = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="));
    let gitea = || {
        ["x-forgejo-signature", "x-gitea-signature"]
            .iter()
            .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
            .map(str::trim)
    };
    hex::decode(github.or_else(gitea)?).ok()
}

/// Whether `tag` is the HMAC-SHA256 of `body` under `secret`, compared in constant time.
pub fn signature_matches(secret: &SecretBytes, body: &[u8], tag: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
    hmac::verify(&key, body, tag).is_ok()
}

/// The event a forge names; a delivery with none is taken for a push (a generic sender).
fn event(headers: &HeaderMap) -> &str {
    ["x-github-event", "x-forgejo-event", "x-gitea-event"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("push")
}

enum Refused {
    TooLarge,
    Unreadable,
}

/// Reads at most [`MAX_BODY`] bytes: a declared length over it is refused unread, a stream that
/// runs past it is dropped there.
async fn read_capped(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Refused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Refused::TooLarge);
    }
    let mut out = Vec::with_capacity(declared.map_or(8192, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Refused::Unreadable)?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(Refused::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn refuse(d: Delivery, e: ApiError) -> Response {
    crate::metrics::global().webhook(d);
    e.into_response()
}

async fn deliver(
    State(state): State<AppState>,
    Extension(limiter): Extension<Arc<Mutex<TokenBucket>>>,
    req: Request,
) -> Response {
    // Not configured: the route is as absent as any other (a 503 would say "try later", and no
    // retry will make a secret appear), with a message for whoever set the forge up.
    let Some(secret) = &state.webhook_secret else {
        return refuse(
            Delivery::NotConfigured,
            ApiError::not_found("the Git webhook is off: set api.webhook_secret_file"),
        );
    };
    let (parts, body) = req.into_parts();
    let body = match read_capped(&parts.headers, body).await {
        Ok(b) => b,
        Err(Refused::TooLarge) => {
            return refuse(
                Delivery::TooLarge,
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("a webhook body is at most {MAX_BODY} bytes"),
                ),
            );
        }
        Err(Refused::Unreadable) => {
            return refuse(
                Delivery::BadRequest,
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body could not be read",
                ),
            );
        }
    };
    let verified =
        signature(&parts.headers).is_some_and(|tag| signature_matches(secret, &body, &tag));
    if !verified {
        return refuse(
            Delivery::BadSignature,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Hub-Signature-256, X-Gitea-Signature or X-Forgejo-Signature must carry the \
                 HMAC-SHA256 of the body with the webhook secret",
            ),
        );
    }
    let event = event(&parts.headers);
    if event != "push" {
        crate::metrics::global().webhook(Delivery::Ignored);
        let note = if event == "ping" {
            "pong".to_owned()
        } else {
            format!("`{event}` needs no poll; kiln polls on push")
        };
        return (
            StatusCode::OK,
            axum::Json(json!({ "polled": false, "message": note })),
        )
            .into_response();
    }
    let taken = limiter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now());
    if let Err(wait) = taken {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "at most {POLLS_PER_MINUTE} webhook polls a minute; kiln polls on its timer too"
            ),
        );
        e.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        return refuse(Delivery::RateLimited, e);
    }
    state.trigger.poke();
    crate::metrics::global().webhook(Delivery::Accepted);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "polled": true, "message": "a poll of the remote is on its way" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_ten_through_then_one_per_six_seconds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, Duration::from_secs(60), t0);
        for i in 0..10 {
            assert!(b.take(t0).is_ok(), "take {i}");
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        let wait = b.take(t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(wait.as_secs_f64().round(), 4.0);
        assert!(b.take(t0 + Duration::from_secs(6)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(6)).is_err());
        // A long quiet spell refills to the capacity, never past it.
        let later = t0 + Duration::from_secs(3600);
        for i in 0..10 {
            assert!(b.take(later).is_ok(), "take {i} after an hour");
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_clock_that_steps_back_takes_nothing_extra() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut b = TokenBucket::new(1, Duration::from_secs(60), t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0 - Duration::from_secs(50)).is_err());
        assert!(b.take(t0 + Duration::from_secs(59)).is_err());
        assert!(b.take(t0 + Duration::from_secs(60)).is_ok());
    }

    #[tokio::test]
    async fn a_stream_past_the_cap_is_dropped_there_and_one_at_it_is_read() {
        let chunks = |n: usize| {
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let tail = bytes::Bytes::from(vec![b'x'; n]);
            let all: Vec<Result<bytes::Bytes, std::io::Error>> = std::iter::repeat_n(chunk, 16)
                .chain(std::iter::once(tail))
                .map(Ok)
                .collect();
            Body::from_stream(futures::stream::iter(all))
        };
        let none = HeaderMap::new();
        assert!(matches!(
            read_capped(&none, chunks(1)).await,
            Err(Refused::TooLarge)
        ));
        assert_eq!(
            read_capped(&none, chunks(0)).await.ok().map(|b| b.len()),
            Some(MAX_BODY)
        );
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "2000000".parse().unwrap());
        assert!(matches!(
            read_capped(&declared, Body::empty()).await,
            Err(Refused::TooLarge)
        ));
    }

    /// The whole router, as `kiln run` builds it, over a Git cache that is never fetched.
    async fn build(dir: &std::path::Path, secret: Option<&[u8]>) -> (Router, crate::git::Trigger) {
        let text = format!(
            "state_dir = {:?}\n[git]\nurl = {:?}\n[proxmox]\nbackend = \"simulated\"\n\
             [talos]\nbackend = \"simulated\"\n[secrets]\nbackend = \"file\"\n",
            dir.join("state").display().to_string(),
            dir.join("remote.git").display().to_string(),
        );
        let config = crate::config::Config::parse(&dir.join("kiln.toml"), &text).unwrap();
        let git = crate::git::GitSource::open(&config.git, &config.state_dir)
            .await
            .unwrap();
        let trigger = crate::git::Trigger::new();
        let state = AppState {
            config: Arc::new(config),
            git,
            trigger: trigger.clone(),
            view: Arc::default(),
            token: SecretBytes::new(b"t"),
            webhook_secret: secret.map(SecretBytes::new),
        };
        (super::super::router(state), trigger)
    }

    async fn post(app: &Router, headers: &[(&str, String)], body: &[u8]) -> StatusCode {
        use tower::ServiceExt;
        let mut req = axum::http::Request::post(PATH);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    }

    /// Whether a poll was asked for: the trigger wakes at once if so, else its hour-long timer
    /// would, which the paused clock reaches at once instead of the one-second bound.
    async fn poked(trigger: &crate::git::Trigger) -> bool {
        tokio::time::timeout(
            Duration::from_secs(1),
            trigger.wait(Duration::from_secs(3600)),
        )
        .await
        .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_secret_the_route_is_404_and_with_one_only_a_signed_push_polls() {
        let dir = tempfile::tempdir().unwrap();
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signed = vec![(
            "x-hub-signature-256",
            format!("sha256={}", sign(b"s", body)),
        )];

        let (app, trigger) = build(dir.path(), None).await;
        assert_eq!(post(&app, &signed, body).await, StatusCode::NOT_FOUND);
        assert!(!poked(&trigger).await);

        let (app, trigger) = build(dir.path(), Some(b"s")).await;
        let wrong = vec![(
            "x-hub-signature-256",
            format!("sha256={}", sign(b"x", body)),
        )];
        assert_eq!(post(&app, &wrong, body).await, StatusCode::UNAUTHORIZED);
        assert!(!poked(&trigger).await);
        let mut ping = signed.clone();
        ping.push(("x-github-event", "ping".into()));
        assert_eq!(post(&app, &ping, body).await, StatusCode::OK);
        assert!(!poked(&trigger).await);
        assert_eq!(post(&app, &signed, body).await, StatusCode::ACCEPTED);
        assert!(poked(&trigger).await);
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        hex::encode(hmac::sign(&key, body).as_ref())
    }

    #[test]
    fn each_forge_s_header_is_read_and_only_the_right_mac_matches() {
        let secret = SecretBytes::new(b"hook-secret");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign(b"hook-secret", body);
        for (name, value) in [
            ("x-hub-signature-256", format!("sha256={good}")),
            ("x-gitea-signature", good.clone()),
            ("x-forgejo-signature", good.clone()),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            let tag = signature(&h).unwrap_or_else(|| panic!("{name} not read"));
            assert!(signature_matches(&secret, body, &tag), "{name}");
            assert!(
                !signature_matches(&secret, b"{}", &tag),
                "{name}: another body"
            );
        }
        let wrong = sign(b"other-secret", body);
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            format!("sha256={wrong}").parse().unwrap(),
        );
        assert!(!signature_matches(&secret, body, &signature(&h).unwrap()));
        // GitHub's header without its prefix, and a value that is not hex, are no signature.
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", good.parse().unwrap());
        assert!(signature(&h).is_none());
        let mut h = HeaderMap::new();
        h.insert("x-gitea-signature", "zz".parse().unwrap());
        assert!(signature(&h).is_none());
    }
}
