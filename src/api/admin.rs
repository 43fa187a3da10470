//! Admin endpoints: bearer-token protected.

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;
use crate::projection::{self, HealthReport};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/admin/projections/health", get(projections_health))
}

/// An admin caller: the bootstrap token from PORTCULLIS_ADMIN_TOKEN (API tokens with the
/// admin scope come with the identity domain).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        match &state.admin_token {
            Some(expected) if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) => {
                Ok(Admin)
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}

async fn projections_health(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<HealthReport>, ApiError> {
    let client = state.pool.get().await?;
    Ok(Json(projection::health(&client).await?))
}
