//! Bounds on one request: how long it may take, body included. Each surface layers
//! [`deadline`] with its own error type, so a request past its time gets that surface's
//! error body (a SCIM error, the JSON API's) with 503 and Retry-After.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// A request ran past `PORTCULLIS_REQUEST_TIMEOUT_SECONDS`; what it did so far is undone
/// with its transaction.
#[derive(Debug, thiserror::Error)]
#[error("the request took longer than {seconds} s")]
pub struct DeadlineExceeded {
    pub seconds: u64,
}

/// Middleware: answers `E::from(DeadlineExceeded)` when the handler takes too long.
pub async fn deadline<E>(State(state): State<AppState>, req: Request, next: Next) -> Response
where
    E: From<DeadlineExceeded> + IntoResponse,
{
    let limit = state.http.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => E::from(DeadlineExceeded {
            seconds: limit.as_secs(),
        })
        .into_response(),
    }
}
