//! HTTP surfaces other than SCIM: liveness, admin; email verification later.

mod admin;
pub mod dashboard;
mod error;
mod ops;
mod verification;

use axum::routing::get;
use axum::Router;

use crate::http::AppState;

pub use error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(admin::router())
        .merge(verification::router())
        .merge(ops::router())
        .merge(dashboard::router())
}

/// Liveness only: the process answers. Readiness (database, migrations, projections) is /readyz.
async fn healthz() -> &'static str {
    "ok\n"
}
