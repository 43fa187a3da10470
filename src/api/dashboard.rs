//! The projection dashboard at `/admin/projections`: a server-rendered table (works with
//! JavaScript off), refreshed in place by a small script, with a lag chart and reset /
//! retry-failed behind a confirmation. The admin token is kept in an HTTP-only, same-site
//! cookie after a login form; it never appears in a URL.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use crate::http::auth::{self, Admin, AuthError, ADMIN_COOKIE};
use crate::http::AppState;
use crate::projection::{self, HealthReport};

const PAGE: &str = include_str!("../../templates/dashboard.html");
const FORM: &str = include_str!("../../templates/admin_form.html");

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/admin",
            get(|| async { Redirect::to("/admin/projections") }),
        )
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/projections", get(dashboard))
        .route("/admin/projections/data", get(data))
        .route("/admin/projections/{name}/{action}", get(confirm).post(act))
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

fn form_page(
    status: StatusCode,
    title: &str,
    message: &str,
    action: &str,
    fields: &str,
    button: &str,
    back: bool,
) -> Response {
    let html = FORM
        .replace("{{title}}", &crate::html_escape(title))
        .replace("{{message}}", message)
        .replace("{{action}}", &crate::html_escape(action))
        .replace("{{fields}}", fields)
        .replace("{{button}}", &crate::html_escape(button))
        .replace(
            "{{back}}",
            if back {
                "<p><a href=\"/admin/projections\">Back</a></p>"
            } else {
                ""
            },
        );
    (status, no_store(Html(html).into_response())).into_response()
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

const TOKEN_FIELD: &str = "<label for=\"token\">Admin token</label>\
    <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>";

async fn login_form() -> Response {
    form_page(
        StatusCode::OK,
        "Portcullis admin",
        "",
        "/admin/login",
        TOKEN_FIELD,
        "Log in",
        false,
    )
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<Login>,
) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let token = f.token.trim();
    match auth::is_admin(&state, Some(token)).await {
        Ok(true) => {
            let secure = headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https");
            let value = auth::admin_cookie_value(token);
            let cookie = format!(
                "{ADMIN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{}",
                if secure { "; Secure" } else { "" }
            );
            let mut res = Redirect::to("/admin/projections").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Ok(false) => form_page(
            StatusCode::UNAUTHORIZED,
            "Portcullis admin",
            "<p class=\"error\">That token is not an admin token.</p>",
            "/admin/login",
            TOKEN_FIELD,
            "Log in",
            false,
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut res = Redirect::to("/admin/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("portcullis_admin=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

fn rows(h: &HealthReport) -> String {
    h.projections
        .iter()
        .map(|p| {
            let n = crate::html_escape(&p.name);
            let rebuild = p
                .rebuild
                .as_ref()
                .map(|r| {
                    let eta = r.eta_seconds.map(|s| format!(", about {s:.0} s")).unwrap_or_default();
                    format!(" <span class=\"rebuild\">rebuilding: {} events to go{eta}</span>", r.events_behind)
                })
                .unwrap_or_default();
            format!(
                "<tr class=\"{status}\" data-name=\"{n}\"><td>{n}</td><td class=\"status\">{status}{rebuild}</td>\
                 <td>{pos}</td><td>{eb}</td><td>{sb:.1}</td><td>{f}</td><td>{d}</td><td>{u}</td>\
                 <td class=\"actions\"><a href=\"/admin/projections/{n}/retry-failed\">retry failed</a>\
                 <a href=\"/admin/projections/{n}/rebuild\">rebuild</a>\
                 <a href=\"/admin/projections/{n}/reset\">reset</a></td></tr>",
                status = crate::html_escape(&p.status),
                pos = crate::html_escape(&p.position),
                eb = p.events_behind,
                sb = p.seconds_behind,
                f = p.failed,
                d = p.dead_lettered,
                u = p.updated_at.to_rfc3339(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
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
    let h = projection::health(&client).await?;
    let notice = n
        .notice
        .map(|m| format!("<p class=\"notice\">{}</p>", crate::html_escape(&m)))
        .unwrap_or_default();
    let html = PAGE
        .replace("{{rows}}", &rows(&h))
        .replace("{{notice}}", &notice)
        .replace("{{horizon}}", &format!("{:.1}", h.horizon_age_seconds))
        .replace("{{updated}}", &chrono::Utc::now().to_rfc3339());
    Ok(no_store(Html(html).into_response()))
}

async fn data(_: Admin<ApiError>, State(state): State<AppState>) -> Result<Response, ApiError> {
    let client = state.pool.get().await?;
    let h = projection::health(&client).await?;
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
        crate::projections::by_name(&name).is_some(),
    ) else {
        return (StatusCode::NOT_FOUND, "no such projection or action").into_response();
    };
    let warning = if action == "reset" {
        "<p>Its read model is emptied and rebuilt from the first event. Reads answer 503 until it has caught up. <em>Rebuild</em> does the same without downtime.</p>"
    } else if action == "rebuild" {
        "<p>A new copy of its read model is built beside the live one and swapped in when it has caught up. Reads and writes go on meanwhile.</p>"
    } else {
        "<p>Its dead-lettered events are applied again; those that still fail stay dead-lettered.</p>"
    };
    form_page(
        StatusCode::OK,
        &format!("{verb} {name}?"),
        warning,
        &format!("/admin/projections/{name}/{action}"),
        "",
        &format!("{verb} {name}"),
        true,
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
    let p = crate::projections::by_name(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no projection {name:?}")))?;
    let notice = match action.as_str() {
        // Through this process's projector when it runs one: it rewinds the hub (so no
        // stale position is published) and wakes the runner at once.
        "reset" => {
            match &state.projector {
                Some(projector) => projector.reset(p.name()).await?,
                None => {
                    projection::reset(&state.pool, &*p).await?;
                    state.hub.rewound(p.name());
                }
            }
            format!("{name} was reset and is being rebuilt")
        }
        "rebuild" => {
            match &state.projector {
                Some(projector) => projector.rebuild(p.name()).await?,
                None => projection::request_rebuild(&state.pool, p.name()).await?,
            }
            format!("{name} is being rebuilt beside the live model")
        }
        "retry-failed" => {
            let r = match &state.projector {
                Some(projector) => projector.retry_failed(p.name()).await?,
                None => projection::retry_failed(&state.pool, &*p, &*state.clock).await?,
            };
            format!(
                "{name}: {} event(s) applied, {} still failing",
                r.applied, r.still_failing
            )
        }
        _ => return Err(ApiError::NotFound(format!("no action {action:?}"))),
    };
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
