//! The one place where errors become HTTP responses (SCIM has its own body format and maps
//! through its own error type).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::domain::DomainError;
use crate::eventstore::StoreError;
use crate::runtime::ProjectionError;

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
    #[error("the read models did not catch up in time")]
    NotCaughtUp(#[from] crate::runtime::WaitError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Deadline(#[from] crate::http::limits::DeadlineExceeded),
    /// A bounded resource (password hashing) is at its limit; a retry soon can succeed.
    #[error("{0}")]
    Busy(String),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Domain(crate::domain::DomainError),
    #[error(transparent)]
    SecEvents(crate::secevents::SecEventsError),
}

/// Domain errors mean on this surface what they mean on SCIM's: the client's doing is a 4xx
/// (404, 400, 412, 409, 413), the rest stays a server error.
impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        match e {
            DomainError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            DomainError::Invalid { field, reason } => ApiError::BadRequest {
                code: "invalid",
                detail: format!("invalid {field}: {reason}"),
            },
            DomainError::VersionMismatch { .. } => ApiError::PreconditionFailed(e.to_string()),
            DomainError::Store(StoreError::AlreadyExists { constraint, value }) => {
                ApiError::Conflict {
                    code: "already_exists",
                    detail: format!("{constraint} {value:?} is already taken"),
                }
            }
            DomainError::Store(StoreError::Conflict { .. }) => ApiError::Conflict {
                code: "conflict",
                detail: "the resource kept changing under concurrent writes; try again".into(),
            },
            DomainError::Store(StoreError::PayloadTooLarge { size, limit, .. }) => {
                ApiError::TooLarge(format!(
                    "the resource is {size} bytes, over the limit of {limit} bytes"
                ))
            }
            DomainError::Busy(what) => {
                ApiError::Busy(format!("{what} is at its limit; try again shortly"))
            }
            other => ApiError::Domain(other),
        }
    }
}

impl From<crate::http::auth::AuthError> for ApiError {
    fn from(e: crate::http::auth::AuthError) -> ApiError {
        match e {
            crate::http::auth::AuthError::Unauthorized => ApiError::Unauthorized,
            crate::http::auth::AuthError::Throttled { retry_after } => {
                ApiError::TooManyRequests { retry_after }
            }
            crate::http::auth::AuthError::Check(d) => ApiError::from(d),
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
            ApiError::Deadline(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            _ if crate::db::unavailable(&self) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let detail = if code == "unavailable" {
            tracing::warn!(error = %crate::error_chain(&self), "request: database unavailable");
            "the database is unavailable for now; try again shortly".to_string()
        } else if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The cause chain goes to the log; the client gets no internals.
            tracing::error!(error = %crate::error_chain(&self), "request failed");
            "internal error; see the service log".to_string()
        } else {
            tracing::debug!(status = status.as_u16(), error = %crate::error_chain(&self), "request refused");
            crate::error_chain(&self)
        };
        let mut res = (status, Json(json!({"error": code, "detail": detail}))).into_response();
        if let ApiError::TooManyRequests { retry_after } = &self {
            if let Ok(v) = retry_after.max(&1).to_string().parse() {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::Aggregate;

    fn status(e: DomainError) -> StatusCode {
        ApiError::from(e).into_response().status()
    }

    #[test]
    fn domain_errors_mean_what_they_mean_on_scim() {
        assert_eq!(
            status(DomainError::NotFound("user x".into())),
            StatusCode::NOT_FOUND
        );
        let invalid = DomainError::Invalid {
            field: "userName",
            reason: "empty".into(),
        };
        assert_eq!(status(invalid), StatusCode::BAD_REQUEST);
        let stale = DomainError::VersionMismatch {
            aggregate: Aggregate::new("user", uuid::Uuid::nil()),
            expected: 1,
            actual: 2,
        };
        assert_eq!(status(stale), StatusCode::PRECONDITION_FAILED);
        let taken = DomainError::Store(StoreError::AlreadyExists {
            constraint: "user.user_name".into(),
            value: "ann".into(),
        });
        assert_eq!(status(taken), StatusCode::CONFLICT);
    }
}
