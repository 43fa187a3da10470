//! SCIM errors and the one place they become responses (RFC 7644 §3.12 bodies).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::filter::ResolveError;
use super::schema;
use crate::domain::DomainError;
use crate::eventstore::StoreError;
use crate::runtime::WaitError;

#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    #[error("{detail}")]
    BadRequest {
        scim_type: &'static str,
        detail: String,
    },
    #[error("missing, malformed or unknown bearer token")]
    Unauthorized,
    #[error("too many unknown bearer tokens from this address; try again in {retry_after} s")]
    TooManyRequests { retry_after: i64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Uniqueness(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("the read models did not catch up in time")]
    NotCaughtUp(#[from] WaitError),
    /// A write that is stored but not yet readable: the client gets its position, to read
    /// it later with Portcullis-Min-Position.
    #[error(
        "the write at {position} is stored, but the read models did not catch up in time: {error}"
    )]
    NotVisibleYet {
        error: WaitError,
        position: crate::eventstore::Position,
    },
    /// The write's own event is gone from the log: PostgreSQL crashed after the write's
    /// asynchronous commit (synchronous_commit off) and before its WAL was written. Nothing
    /// of it is kept, so the client may send it again.
    #[error("the database lost the write at {0} in a crash before it was durable; send it again")]
    Lost(crate::eventstore::Position),
    /// A read model was reset and is filling up again: any answer from it could be partial.
    #[error("the {0} read model was reset and is being rebuilt; try again shortly")]
    Incomplete(&'static str),
    #[error(transparent)]
    Deadline(#[from] crate::http::limits::DeadlineExceeded),
    /// A bounded resource (password hashing) is at its limit; a retry soon can succeed.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Domain(DomainError),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
}

impl ScimError {
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> ScimError {
        ScimError::BadRequest {
            scim_type,
            detail: detail.into(),
        }
    }
    pub fn syntax(detail: impl Into<String>) -> ScimError {
        Self::bad("invalidSyntax", detail)
    }
    pub fn value(detail: impl Into<String>) -> ScimError {
        Self::bad("invalidValue", detail)
    }
    pub fn filter(detail: impl Into<String>) -> ScimError {
        Self::bad("invalidFilter", detail)
    }
    pub fn path(detail: impl Into<String>) -> ScimError {
        Self::bad("invalidPath", detail)
    }
    pub fn mutability(detail: impl Into<String>) -> ScimError {
        Self::bad("mutability", detail)
    }
    /// A value filter in a PATCH path that does not fit the schema: a name it does not
    /// have makes the path wrong (invalidPath); a value or operator of the wrong type, the
    /// filter (invalidFilter).
    pub fn patch_filter(e: ResolveError) -> ScimError {
        match e {
            ResolveError::Invalid(detail) => Self::filter(detail),
            other => Self::path(other.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ScimError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ScimError::Unauthorized => StatusCode::UNAUTHORIZED,
            ScimError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ScimError::NotFound(_) => StatusCode::NOT_FOUND,
            ScimError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ScimError::Uniqueness(_) => StatusCode::CONFLICT,
            ScimError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ScimError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ScimError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ScimError::NotCaughtUp(_)
            | ScimError::NotVisibleYet { .. }
            | ScimError::Lost(_)
            | ScimError::Incomplete(_)
            | ScimError::Deadline(_)
            | ScimError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ScimError::Domain(_) | ScimError::Pool(_) | ScimError::Db(_) => {
                if self.database_unavailable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }
    }

    /// The database is down, restarting, out of connections or timed out: the write was
    /// not made, and a client that retries later can succeed (503, not 500).
    fn database_unavailable(&self) -> bool {
        matches!(
            self,
            ScimError::Domain(_) | ScimError::Pool(_) | ScimError::Db(_)
        ) && crate::db::unavailable(self)
    }

    pub fn scim_type(&self) -> Option<&'static str> {
        match self {
            ScimError::BadRequest { scim_type, .. } => Some(scim_type),
            ScimError::Uniqueness(_) => Some("uniqueness"),
            _ => None,
        }
    }

    /// The error body; server errors log their cause chain and show no internals.
    pub fn body(&self) -> serde_json::Value {
        let status = self.status();
        // A client's mistake is not the service's: 4xx (and 501, a feature not offered) log
        // at debug/info; only faults of the service are errors.
        let detail = match status {
            StatusCode::SERVICE_UNAVAILABLE if self.database_unavailable() => {
                tracing::warn!(error = %crate::error_chain(self), "SCIM request: database unavailable");
                "the database is unavailable for now; try again shortly".to_string()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %crate::error_chain(self), "SCIM request unavailable");
                crate::error_chain(self)
            }
            StatusCode::NOT_IMPLEMENTED => {
                tracing::info!(error = %self, "SCIM request for an unimplemented feature");
                self.to_string()
            }
            s if s.is_server_error() => {
                tracing::error!(error = %crate::error_chain(self), "SCIM request failed");
                "internal error; see the service log".to_string()
            }
            _ => {
                tracing::debug!(status = status.as_u16(), error = %crate::error_chain(self), "SCIM request refused");
                self.to_string()
            }
        };
        let mut body = json!({
            "schemas": [schema::ERROR],
            "status": status.as_u16().to_string(),
            "detail": detail,
        });
        if let Some(t) = self.scim_type() {
            body["scimType"] = t.into();
        }
        body
    }
}

impl From<crate::http::auth::AuthError> for ScimError {
    fn from(e: crate::http::auth::AuthError) -> ScimError {
        match e {
            crate::http::auth::AuthError::Unauthorized => ScimError::Unauthorized,
            crate::http::auth::AuthError::Throttled { retry_after } => {
                ScimError::TooManyRequests { retry_after }
            }
            crate::http::auth::AuthError::Check(d) => ScimError::from(d),
        }
    }
}

impl From<crate::http::position::BadPosition> for ScimError {
    fn from(e: crate::http::position::BadPosition) -> ScimError {
        ScimError::syntax(e.to_string())
    }
}

/// Domain errors that are the client's doing become 4xx; the rest stay server errors.
impl From<DomainError> for ScimError {
    fn from(e: DomainError) -> ScimError {
        match e {
            DomainError::NotFound(what) => ScimError::NotFound(format!("{what} not found")),
            DomainError::Invalid { reason, .. } => ScimError::value(reason),
            DomainError::VersionMismatch { .. } => {
                ScimError::PreconditionFailed(format!("If-Match failed: {e}"))
            }
            DomainError::Store(StoreError::AlreadyExists { constraint, value }) => {
                let what = match constraint.as_str() {
                    crate::domain::user::USER_NAME => "userName",
                    crate::domain::group::DISPLAY_NAME => "displayName",
                    other => other,
                };
                ScimError::Uniqueness(format!("{what} {value:?} is already taken"))
            }
            DomainError::Store(StoreError::PayloadTooLarge { size, limit, .. }) => {
                ScimError::TooLarge(format!(
                    "the resource is {size} bytes, over the limit of {limit} bytes"
                ))
            }
            DomainError::Store(StoreError::Conflict { .. }) => ScimError::Uniqueness(
                "the resource kept changing under concurrent writes; try again".into(),
            ),
            DomainError::Busy(what) => {
                ScimError::Busy(format!("{what} is at its limit; try again shortly"))
            }
            other => ScimError::Domain(other),
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (status, super::json::ScimJson(self.body())).into_response();
        if let ScimError::NotVisibleYet { position, .. } = &self {
            if let Ok(p) = HeaderValue::from_str(&position.to_string()) {
                res.headers_mut()
                    .insert(crate::http::position::POSITION_HEADER, p);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here passes: a client that retries after a second gets an answer.
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ScimError::TooManyRequests { retry_after } = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.max(&1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}
