//! Admin endpoints: bearer-token protected.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;
use crate::domain::token::{self, Scope};
use crate::projection::{self, HealthReport};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/admin/projections/health", get(projections_health))
}

/// An admin caller: the bootstrap token from PORTCULLIS_ADMIN_TOKEN, or an API token with
/// the admin scope.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = super::dashboard::presented_admin_token(&parts.headers);
        if is_admin(state, presented.as_deref()).await? {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Whether `presented` is the bootstrap token (compared in constant time) or an API token
/// with the admin scope.
pub async fn is_admin(state: &AppState, presented: Option<&str>) -> Result<bool, ApiError> {
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    if let Some(expected) = &state.admin_token {
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Ok(true);
        }
    }
    let client = state.pool.get().await?;
    Ok(matches!(
        token::authenticate(&client, presented).await?,
        Some(caller) if caller.scope == Scope::Admin
    ))
}

async fn projections_health(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<HealthReport>, ApiError> {
    let client = state.pool.get().await?;
    Ok(Json(projection::health(&client).await?))
}
