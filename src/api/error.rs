//! The one place where errors become HTTP responses (SCIM has its own body format and maps
//! through its own error type).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::projection::ProjectionError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("too many requests; try again in {retry_after} s")]
    TooManyRequests { retry_after: i64 },
    #[error("the read models did not catch up in time: {0}")]
    NotCaughtUp(#[from] crate::projection::WaitError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Domain(#[from] crate::domain::DomainError),
}

impl From<crate::http::auth::AuthError> for ApiError {
    fn from(e: crate::http::auth::AuthError) -> ApiError {
        match e {
            crate::http::auth::AuthError::Unauthorized => ApiError::Unauthorized,
            crate::http::auth::AuthError::Check(d) => ApiError::Domain(d),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) | ApiError::Projection(ProjectionError::Unknown(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_soon"),
            ApiError::NotCaughtUp(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_caught_up"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let detail = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The cause chain goes to the log; the client gets no internals.
            tracing::error!(error = %crate::error_chain(&self), "request failed");
            "internal error; see the service log".to_string()
        } else {
            tracing::debug!(status = status.as_u16(), error = %crate::error_chain(&self), "request refused");
            self.to_string()
        };
        let mut res = (status, Json(json!({"error": code, "detail": detail}))).into_response();
        if let ApiError::TooManyRequests { retry_after } = &self {
            if let Ok(v) = retry_after.max(&1).to_string().parse() {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        }
        res
    }
}
