//! The projection dashboard at `/admin/projections`: a server-rendered table (works with
//! JavaScript off), refreshed in place by a small script, with a lag chart and reset /
//! retry-failed behind a confirmation. A login opens a server-side session (`http::session`)
//! whose random id is kept in an HTTP-only, same-site cookie; no token is in a cookie or URL.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::http::auth::{self, Admin, AuthError};
use crate::http::session;
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;
use crate::runtime::{self, HealthReport};

pub fn router() -> Router<AppState> {
    Router::new()
        .tracked_route(
            "/admin",
            get(|| async { Redirect::to("/admin/projections") }),
        )
        .tracked_route("/admin/login", get(login_form).post(login))
        .tracked_route("/admin/logout", post(logout))
        .tracked_route("/admin/projections", get(dashboard))
        .tracked_route("/admin/projections/data", get(data))
        .tracked_route("/admin/projections/{name}/{action}", get(confirm).post(act))
}

/// A dashboard visitor with a valid admin token; others are sent to the login form.
type AdminPage = Admin<LoginFirst>;

/// The dashboard's answer to a visitor who is not an admin: the login form.
pub struct LoginFirst(Response);

impl From<AuthError> for LoginFirst {
    fn from(e: AuthError) -> LoginFirst {
        LoginFirst(match e {
            AuthError::Unauthorized => Redirect::to("/admin/login").into_response(),
            other => ApiError::from(other).into_response(),
        })
    }
}

impl IntoResponse for LoginFirst {
    fn into_response(self) -> Response {
        self.0
    }
}

/// Refuses cross-site form posts even from browsers that ignore SameSite.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

/// What a form page says: its title, an error or a message, where it posts, and whether it
/// asks for the admin token.
#[derive(Serialize)]
struct FormPage<'a> {
    title: &'a str,
    error: Option<&'a str>,
    message: Option<&'a str>,
    action: &'a str,
    token_field: bool,
    button: &'a str,
    back: bool,
}

fn form_page(status: StatusCode, form: &FormPage) -> Response {
    match crate::templates::render("admin_form.html", form) {
        Ok(html) => (status, no_store(Html(html).into_response())).into_response(),
        Err(e) => page_failed(e),
    }
}

/// A template that does not render is a bug: a 500 with the cause in the log.
fn page_failed(e: minijinja::Error) -> Response {
    tracing::error!(error = %crate::error_chain(&e), "page template failed");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

fn login_page(error: Option<&str>) -> FormPage<'_> {
    FormPage {
        title: "Portcullis admin",
        error,
        message: None,
        action: "/admin/login",
        token_field: true,
        button: "Log in",
        back: false,
    }
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn login_form() -> Response {
    form_page(StatusCode::OK, &login_page(None))
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<Login>,
) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let now = state.clock.now();
    if let Err(retry_after) = state.logins.check(peer.ip(), now) {
        return ApiError::TooManyRequests { retry_after }.into_response();
    }
    let token = f.token.trim();
    let opened = match auth::is_admin(&state, Some(token), Some(peer.ip())).await {
        Ok(true) => session::open(&state, token)
            .await
            .map(Some)
            .map_err(AuthError::from),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    match opened {
        Ok(Some(id)) => {
            let mut res = Redirect::to("/admin/projections").into_response();
            let cookie = session::set_cookie(&id, state.http.plain_http);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Ok(None) => {
            state.logins.failed(peer.ip(), now);
            form_page(
                StatusCode::UNAUTHORIZED,
                &login_page(Some("That token is not an admin token.")),
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Ends the session on the server, not only in the browser.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(id) = session::from_cookies(&headers) {
        if let Err(e) = session::close(&state, &id).await {
            return ApiError::from(e).into_response();
        }
    }
    let mut res = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(state.http.plain_http)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// A projection's row on the dashboard, formatted for display.
#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    status: &'a str,
    position: &'a str,
    events_behind: i64,
    seconds_behind: String,
    failed: i64,
    dead_lettered: i64,
    updated_at: String,
    rebuild: Option<RebuildRow>,
}

#[derive(Serialize)]
struct RebuildRow {
    events_behind: i64,
    eta: Option<String>,
}

fn rows(h: &HealthReport) -> Vec<Row<'_>> {
    h.projections
        .iter()
        .map(|p| Row {
            name: &p.name,
            status: &p.status,
            position: &p.position,
            events_behind: p.events_behind,
            seconds_behind: format!("{:.1}", p.seconds_behind),
            failed: p.failed,
            dead_lettered: p.dead_lettered,
            updated_at: p.updated_at.to_rfc3339(),
            rebuild: p.rebuild.as_ref().map(|r| RebuildRow {
                events_behind: r.events_behind,
                eta: r.eta_seconds.map(|s| format!("{s:.0}")),
            }),
        })
        .collect()
}

/// Every security-event receiver's health, formatted for display.
async fn receiver_rows(client: &deadpool_postgres::Client) -> Result<Vec<Value>, ApiError> {
    let all = crate::secevents::receivers::list(client, None).await?;
    Ok(all
        .iter()
        .map(|r| {
            let h = &r.health;
            json!({
                "id": r.id, "name": r.name, "org_id": r.org_id, "delivery": r.delivery.as_str(),
                "status": h.status, "pending": h.pending, "rejected": h.rejected,
                "lag_seconds": format!("{:.1}", h.lag_seconds), "events_unread": h.events_unread,
                "failures": h.failures, "last_error": h.last_error,
                "delivered_total": h.delivered_total,
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

async fn dashboard(
    _: AdminPage,
    State(state): State<AppState>,
    Query(n): Query<Notice>,
) -> Result<Response, ApiError> {
    let client = state.pool.get().await?;
    let h = runtime::health(&client).await?;
    let receivers = receiver_rows(&client).await?;
    drop(client);
    let page = crate::templates::render(
        "dashboard.html",
        serde_json::json!({
            "projections": rows(&h),
            "receivers": receivers,
            "notice": n.notice,
            "horizon": format!("{:.1}", h.horizon_age_seconds),
            "updated": chrono::Utc::now().to_rfc3339(),
        }),
    );
    let html = match page {
        Ok(html) => html,
        Err(e) => return Ok(page_failed(e)),
    };
    Ok(no_store(Html(html).into_response()))
}

async fn data(_: Admin<ApiError>, State(state): State<AppState>) -> Result<Response, ApiError> {
    let client = state.pool.get().await?;
    let h = runtime::health(&client).await?;
    let body = json!({"health": h, "history": state.lag_history.samples()});
    Ok(no_store(Json(body).into_response()))
}

fn action_name(action: &str) -> Option<&'static str> {
    match action {
        "reset" => Some("Reset"),
        "rebuild" => Some("Rebuild"),
        "retry-failed" => Some("Retry failed events of"),
        _ => None,
    }
}

async fn confirm(_: AdminPage, Path((name, action)): Path<(String, String)>) -> Response {
    let (Some(verb), true) = (
        action_name(&action),
        crate::read_models::by_name(&name).is_some(),
    ) else {
        return (StatusCode::NOT_FOUND, "no such projection or action").into_response();
    };
    let warning = if action == "reset" {
        "Its read model is emptied and rebuilt from the first event. Reads answer 503 until it has caught up. Rebuild does the same without downtime."
    } else if action == "rebuild" {
        "A new copy of its read model is built beside the live one and swapped in when it has caught up. Reads and writes go on meanwhile."
    } else {
        "Its dead-lettered events are applied again; those that still fail stay dead-lettered."
    };
    form_page(
        StatusCode::OK,
        &FormPage {
            title: &format!("{verb} {name}?"),
            error: None,
            message: Some(warning),
            action: &format!("/admin/projections/{name}/{action}"),
            token_field: false,
            button: &format!("{verb} {name}"),
            back: true,
        },
    )
}

async fn act(
    _: AdminPage,
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Ok(StatusCode::FORBIDDEN.into_response());
    }
    let p = crate::read_models::by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no projection {name:?}")))?;
    let notice = match action.as_str() {
        // Through this process's projector when it runs one: it rewinds the hub (so no
        // stale position is published) and wakes the runner at once.
        "reset" => {
            match &state.projector {
                Some(projector) => projector.reset(p.name()).await?,
                None => {
                    let reset = runtime::reset(&state.pool, &*p);
                    state.hub.rewind(p.name(), reset).await?
                }
            }
            format!("{name} was reset and is being rebuilt")
        }
        "rebuild" => {
            match &state.projector {
                Some(projector) => projector.rebuild(p.name()).await?,
                None => runtime::request_rebuild(&state.pool, p.name()).await?,
            }
            format!("{name} is being rebuilt beside the live model")
        }
        "retry-failed" => {
            let r = match &state.projector {
                Some(projector) => projector.retry_failed(p.name()).await?,
                None => runtime::retry_failed(&state.pool, &*p, &*state.clock).await?,
            };
            format!(
                "{name}: {} event(s) applied, {} still failing",
                r.applied, r.still_failing
            )
        }
        _ => return Err(ApiError::NotFound(format!("no action {action:?}"))),
    };
    // Projection actions write no events: the log line is their audit trail (the request's
    // span carries its request id).
    let actor = crate::eventstore::context::current()
        .get("actor")
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(projection = %name, %action, %actor, "dashboard action");
    let url = format!("/admin/projections?notice={}", form_urlencoded(&notice));
    Ok(Redirect::to(&url).into_response())
}

fn form_urlencoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
