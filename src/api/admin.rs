//! Admin endpoints: bearer-token protected.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;
use crate::runtime::{self, HealthReport};

pub fn router() -> Router<AppState> {
    Router::new().tracked_route("/api/v1/admin/projections/health", get(projections_health))
}

/// An admin caller of the JSON API.
pub type Admin = crate::http::auth::Admin<ApiError>;

async fn projections_health(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<HealthReport>, ApiError> {
    let client = state.pool.get().await?;
    Ok(Json(runtime::health(&client).await?))
}
