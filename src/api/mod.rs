//! HTTP surfaces other than SCIM: health now; admin and email verification later.

use axum::routing::get;
use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// Liveness only: the process answers. Readiness (database, migrations, projections) is /readyz.
async fn healthz() -> &'static str {
    "ok\n"
}
