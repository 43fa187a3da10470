//! Security events over HTTP: the JWKS that verifies an organization's SETs (public),
//! receivers and signing keys (admins), and the poll endpoint (RFC 8936) a poll receiver
//! calls with its own token.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::time::Duration;

use uuid::Uuid;

use super::admin::Admin;
use super::error::ApiError;
use crate::backoff::Backoff;
use crate::domain::org;
use crate::http::auth::{bearer, peer};
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;
use crate::secevents::poll::{self, PollRequest, PollResponse};
use crate::secevents::receivers::{self, Registration};
use crate::secevents::{feed, keys, SecEventsError};

pub fn router() -> Router<AppState> {
    Router::new()
        .tracked_route("/api/v1/orgs/{org}/jwks.json", get(jwks))
        .tracked_route("/api/v1/orgs/{org}/receivers", get(list).post(register))
        .tracked_route(
            "/api/v1/orgs/{org}/receivers/{id}",
            get(show).delete(remove),
        )
        .tracked_route("/api/v1/orgs/{org}/receivers/{id}/retry", post(retry))
        .tracked_route("/api/v1/orgs/{org}/receivers/{id}/poll", post(poll))
        .tracked_route(
            "/api/v1/orgs/{org}/signing-keys",
            get(key_list).post(rotate),
        )
        .tracked_route("/api/v1/orgs/{org}/signing-keys/{kid}", delete(key_remove))
}

impl From<SecEventsError> for ApiError {
    fn from(e: SecEventsError) -> ApiError {
        match e {
            SecEventsError::Invalid(_) | SecEventsError::UnknownUri(_) => ApiError::BadRequest {
                code: "invalid",
                detail: e.to_string(),
            },
            SecEventsError::NoSuchReceiver(_)
            | SecEventsError::NoSuchOrg(_)
            | SecEventsError::NoSuchKey(_) => ApiError::NotFound(e.to_string()),
            SecEventsError::ActiveKey => ApiError::Conflict {
                code: "active_key",
                detail: e.to_string(),
            },
            other => ApiError::SecEvents(other),
        }
    }
}

fn id(s: &str) -> Result<Uuid, ApiError> {
    s.parse().map_err(|_| {
        ApiError::NotFound(format!(
            "no such resource {:?}",
            s.chars().take(64).collect::<String>()
        ))
    })
}

fn body<T: serde::de::DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest {
        code: "invalid",
        detail: format!("the body is not the JSON expected: {e}"),
    })
}

async fn existing_org(state: &AppState, org: &str) -> Result<Uuid, ApiError> {
    let org = id(org)?;
    if !org::exists(&state.store, org).await? {
        return Err(SecEventsError::NoSuchOrg(org).into());
    }
    Ok(org)
}

/// The organization's signing keys as a JWK Set (RFC 7517), for anyone who verifies SETs.
async fn jwks(
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let org = id(&org)?;
    let set = keys::jwks(&state.pool.get().await?, org).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        Json(set),
    )
        .into_response())
}

async fn list(
    _: Admin,
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = id(&org)?;
    let all = receivers::list(&state.pool.get().await?, Some(org)).await?;
    Ok(Json(json!({ "receivers": all })))
}

async fn register(
    _: Admin,
    State(state): State<AppState>,
    Path(org): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let org = existing_org(&state, &org).await?;
    let r: Registration = serde_json::from_slice(&raw).map_err(|e| ApiError::BadRequest {
        code: "invalid",
        detail: format!(
            "a registration is {{\"name\", \"delivery\": \"push\"|\"poll\", \"endpoint\", \
             \"events\": [...], \"audience\"}}: {e}"
        ),
    })?;
    let base = &state.secevents.opts.public_url;
    let made = receivers::register(&mut state.pool.get().await?, org, &r, base).await?;
    state.secevents.wake();
    let mut out = json!(made.receiver);
    if let Some(t) = &made.poll_token {
        use secrecy::ExposeSecret;
        out["poll_url"] = json!(receivers::poll_url(base, org, made.receiver.id));
        out["poll_token"] = json!(t.expose_secret());
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn show(
    _: Admin,
    State(state): State<AppState>,
    Path((org, rid)): Path<(String, String)>,
) -> Result<Json<receivers::Receiver>, ApiError> {
    let client = state.pool.get().await?;
    Ok(Json(receivers::get(&client, id(&org)?, id(&rid)?).await?))
}

async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path((org, rid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    receivers::remove(&state.pool.get().await?, id(&org)?, id(&rid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn retry(
    _: Admin,
    State(state): State<AppState>,
    Path((org, rid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let n = receivers::retry(&state.pool.get().await?, id(&org)?, id(&rid)?).await?;
    state.secevents.wake();
    Ok(Json(json!({ "requeued": n })))
}

async fn key_list(
    _: Admin,
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all = keys::list(&state.pool.get().await?, id(&org)?).await?;
    Ok(Json(json!({ "keys": all })))
}

async fn rotate(
    _: Admin,
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let org = existing_org(&state, &org).await?;
    let kid = keys::rotate(&mut state.pool.get().await?, org).await?;
    Ok((StatusCode::CREATED, Json(json!({ "kid": kid }))).into_response())
}

async fn key_remove(
    _: Admin,
    State(state): State<AppState>,
    Path((org, kid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    keys::remove(&state.pool.get().await?, id(&org)?, &kid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A poll receiver of the `{org}` and `{id}` in the route, by its bearer token; unknown
/// tokens count against the caller's address like unknown API tokens.
struct Poller {
    id: Uuid,
}

impl FromRequestParts<AppState> for Poller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path((org, rid)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        let (org, rid) = (id(&org)?, id(&rid)?);
        let presented = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let (from, now) = (peer(parts), state.clock.now());
        if let Some(ip) = from {
            if let Err(retry_after) = state.bearer_failures.check(ip, now) {
                return Err(ApiError::TooManyRequests { retry_after });
            }
        }
        let client = state.pool.get().await?;
        if receivers::by_poll_token(&client, org, rid, presented).await? {
            return Ok(Poller { id: rid });
        }
        if let Some(ip) = from {
            state.bearer_failures.failed(ip, now);
        }
        Err(ApiError::Unauthorized)
    }
}

/// RFC 8936 §2.4: acknowledge, report errors, and get the next SETs, waiting for them (up to
/// the long-poll bound) unless `returnImmediately`.
async fn poll(
    State(state): State<AppState>,
    who: Poller,
    raw: Bytes,
) -> Result<Json<PollResponse>, ApiError> {
    let req: PollRequest = body(&raw)?;
    let max = req.check()?;
    poll::settle(&state.pool, who.id, &req, state.clock.now()).await?;
    if max == 0 {
        return Ok(Json(PollResponse::default()));
    }
    let opts = &state.secevents.opts;
    let wait = opts.long_poll.min(
        state
            .http
            .request_timeout
            .saturating_sub(std::time::Duration::from_secs(2)),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = state.secevents.changed();
    let mut horizon = Backoff::new(Duration::from_millis(1), Duration::from_millis(100));
    loop {
        changed.borrow_and_update();
        let latest = state.secevents.latest();
        let now = state.clock.now();
        let filled = feed::fill_up(&state.pool, who.id, &opts.public_url, now, 4).await?;
        let got = poll::take(&state.pool, who.id, max).await?;
        if !got.sets.is_empty() || req.return_immediately {
            return Ok(Json(got));
        }
        let wait_until = if filled.behind(latest) {
            // An open transaction holds the horizon below an append already announced: its
            // wake-up has passed, so look again shortly.
            (tokio::time::Instant::now() + horizon.next_delay()).min(deadline)
        } else {
            horizon.reset();
            deadline
        };
        // Woken by new events or SETs anywhere; at the deadline the long poll ends empty.
        let woken = tokio::time::timeout_at(wait_until, changed.changed()).await;
        if matches!(woken, Ok(Err(_))) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(got));
        }
    }
}
