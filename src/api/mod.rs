//! HTTP surfaces other than SCIM: liveness and readiness, metrics, the admin API and dashboard,
//! email verification.

mod admin;
pub mod audit;
pub mod dashboard;
mod error;
mod ops;
mod secevents;
mod verification;

use axum::routing::get;
use axum::Router;

use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;

pub use error::ApiError;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .tracked_route("/healthz", get(healthz))
        .merge(admin::router())
        .merge(audit::router())
        .merge(verification::router())
        .merge(ops::router())
        .merge(secevents::router())
        .merge(dashboard::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::limits::deadline::<ApiError>,
        ))
}

/// Liveness only: the process answers. Readiness (database, migrations, projections) is /readyz.
async fn healthz() -> &'static str {
    "ok\n"
}
