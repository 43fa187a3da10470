//! HTTP surfaces other than SCIM: liveness, admin; email verification later.

mod admin;
pub mod dashboard;
mod error;
mod ops;
mod verification;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

pub use error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(admin::router())
        .merge(verification::router())
        .merge(ops::router())
        .merge(dashboard::router())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Liveness only: the process answers. Readiness (database, migrations, projections) is /readyz.
async fn healthz() -> &'static str {
    "ok\n"
}
