//! HTTP surfaces other than SCIM: liveness, admin; email verification later.

mod admin;
mod error;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

pub use error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(admin::router())
}

/// Liveness only: the process answers. Readiness (database, migrations, projections) is /readyz.
async fn healthz() -> &'static str {
    "ok\n"
}
