//! Email verification over REST (JSON, an org's `scim` token), and the page the link in the
//! mail opens. Answers never tell an unknown user from a wrong code where that would let a
//! caller probe for accounts.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::provenance::Actor;
use crate::domain::verification::{self, VerifyError};
use crate::http::position::with_position;
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .tracked_route(
            "/api/v1/orgs/{org}/users/{user_id}/email/verification",
            post(request),
        )
        .tracked_route(
            "/api/v1/orgs/{org}/users/{user_id}/email/verify",
            post(verify),
        )
        .tracked_route("/api/v1/orgs/{org}/users/{user_id}/email", get(status))
        .tracked_route("/verify-email", get(link))
}

/// A caller with a `scim` token of the org in the path.
/// A caller with an org token (SCIM scope) of the org in the path.
type OrgCaller = crate::http::auth::OrgCaller<ApiError>;

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> ApiError {
        match e {
            VerifyError::NotFound => ApiError::NotFound("no such user".into()),
            VerifyError::NoEmail => ApiError::Conflict {
                code: "no_email",
                detail: "the user has no email address to verify".into(),
            },
            VerifyError::TooSoon { retry_after } => ApiError::TooManyRequests { retry_after },
            VerifyError::Invalid => ApiError::BadRequest {
                code: "invalid_code",
                detail: "the code is wrong, expired or already used".into(),
            },
            VerifyError::Domain(d) => ApiError::from(d),
        }
    }
}

async fn request(
    caller: OrgCaller,
    State(state): State<AppState>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let user: Uuid = user
        .parse()
        .map_err(|_| ApiError::from(VerifyError::NotFound))?;
    let r = verification::request(
        &state.store,
        &*state.clock,
        &state.verification,
        caller.org,
        user,
    )
    .await?;
    state.wake_mailer();
    let body = json!({"status": "sent", "request_id": r.request_id});
    Ok(with_position(
        (StatusCode::ACCEPTED, Json(body)).into_response(),
        r.position,
    ))
}

async fn verify(
    caller: OrgCaller,
    State(state): State<AppState>,
    Path((_, user)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
        .ok_or(ApiError::BadRequest {
            code: "invalid_request",
            detail: "send {\"code\": \"...\"}".into(),
        })?;
    // An unknown user or another org's user answers like a wrong code.
    let Ok(user) = user.parse::<Uuid>() else {
        return Err(VerifyError::Invalid.into());
    };
    let position = verification::verify_code(
        &state.store,
        &*state.clock,
        &state.verification,
        caller.org,
        user,
        &code,
    )
    .await?;
    // Read-your-writes: SCIM reads right after this show the address verified.
    state
        .hub
        .wait_for_position("users", position, state.scim.wait_timeout)
        .await?;
    Ok(with_position(
        Json(json!({"verified": true})).into_response(),
        position,
    ))
}

async fn status(
    caller: OrgCaller,
    State(state): State<AppState>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user: Uuid = user
        .parse()
        .map_err(|_| ApiError::from(VerifyError::NotFound))?;
    let (email, verified) =
        verification::status(&state.store, &state.verification, caller.org, user).await?;
    Ok(Json(json!({"email": email, "verified": verified})))
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    user: Option<String>,
    token: Option<String>,
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let context = json!({"title": title, "message": message});
    let html = match crate::templates::render("verify_email_page.html", context) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "page template failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut res = (status, Html(html)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

/// The link from the mail. One page for every failure: wrong, expired, used, unknown.
async fn link(State(state): State<AppState>, Query(q): Query<LinkQuery>) -> Response {
    let user = q.user.as_deref().and_then(|u| u.parse::<Uuid>().ok());
    let result = match (user, q.token.as_deref()) {
        (Some(user), Some(token)) if !token.is_empty() && token.len() <= 100 => {
            Actor::VerificationLink.record();
            verification::verify_link(
                &state.store,
                &*state.clock,
                &state.verification,
                user,
                token,
            )
            .await
        }
        _ => Err(VerifyError::Invalid),
    };
    match result {
        Ok(_) => page(
            StatusCode::OK,
            "Email address verified",
            "Thank you: your email address is verified. You can close this page.",
        ),
        Err(VerifyError::Domain(e)) => {
            let status = if crate::db::unavailable(&e) {
                tracing::warn!(error = %crate::error_chain(&e), "verification link: database unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                tracing::error!(error = %crate::error_chain(&e), "verification link failed");
                StatusCode::INTERNAL_SERVER_ERROR
            };
            page(
                status,
                "Something went wrong",
                "We could not check this link just now. Please try again in a moment.",
            )
        }
        Err(_) => page(
            StatusCode::BAD_REQUEST,
            "This link is invalid or has expired",
            "The link is wrong, expired or was already used. Ask for a new code and try again.",
        ),
    }
}
