//! The bearer token on every route but `/healthz`, `/readyz` and the HMAC-verified webhook.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, SecretBytes};

/// Whether `presented` is the token, in time that does not depend on where they first differ
/// (aws-lc's constant-time compare), so the token cannot be guessed byte by byte from timings.
pub fn token_matches(presented: &[u8], token: &SecretBytes) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(presented, token.expose()).is_ok()
}

/// The `Authorization: Bearer …` value of a request, if it has one.
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then_some(rest)
        .map(<[u8]>::trim_ascii)
}

pub async fn require_bearer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match bearer(&req) {
        Some(t) if token_matches(t, &state.token) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let token = SecretBytes::new(b"s3cret-token");
        assert!(token_matches(b"s3cret-token", &token));
        assert!(!token_matches(b"s3cret-toke", &token));
        assert!(!token_matches(b"s3cret-tokenX", &token));
        assert!(!token_matches(b"", &token));
    }
}
