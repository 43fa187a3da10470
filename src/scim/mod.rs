//! The SCIM 2.0 API (RFC 7643/7644, the README's SCIM section) under `/scim/v2/{org_id}/`: bearer tokens of
//! the org, read-your-writes on every response, errors as SCIM error bodies.

mod bulk;
pub mod cursor;
mod discovery;
mod error;
pub mod filter;
mod paging;
pub mod patch;
pub mod query;
mod read;
pub mod resource;
pub mod schema;
mod write;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::AppState;
use crate::domain::token::Scope;
use crate::eventstore::Position;

pub use error::ScimError;
use read::ListQuery;
pub use read::{Ctx, PREPARED_PER_CONNECTION};
use resource::Selection;
use schema::{ResourceType, GROUP_TYPE, USER_TYPE};

pub const MEDIA_TYPE: &str = "application/scim+json";
/// The response header with the position of a write.
pub const POSITION_HEADER: &str = "portcullis-position";
/// The request header naming the position a read must reflect.
pub const MIN_POSITION_HEADER: &str = "portcullis-min-position";
/// The read models SCIM answers from: every response waits for both.
pub const READ_MODELS: [&str; 2] = ["users", "groups"];
/// The most resources one list response holds (advertised as filter.maxResults).
pub const MAX_RESULTS: i64 = 1000;

/// A member of a JSON object by name, case-insensitively (SCIM names are).
pub(crate) fn member<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A JSON body served as `application/scim+json`.
pub struct ScimJson(pub Value);

impl IntoResponse for ScimJson {
    fn into_response(self) -> Response {
        let mut res = axum::Json(self.0).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        res
    }
}

pub fn router(state: &AppState) -> Router<AppState> {
    let limit = state.scim.max_body_bytes;
    let m = |r: MethodRouter<AppState>| r.fallback(method_not_allowed);
    let scim = Router::new()
        .route("/scim/v2/{org}/Users", m(get(list_users).post(create_user)))
        .route(
            "/scim/v2/{org}/Groups",
            m(get(list_groups).post(create_group)),
        )
        .route("/scim/v2/{org}/Users/.search", m(post(search_users)))
        .route("/scim/v2/{org}/Groups/.search", m(post(search_groups)))
        .route("/scim/v2/{org}/.search", m(post(search_all)))
        .route(
            "/scim/v2/{org}/Users/{id}",
            m(get(get_user)
                .put(put_user)
                .patch(patch_user)
                .delete(delete_user)),
        )
        .route(
            "/scim/v2/{org}/Groups/{id}",
            m(get(get_group)
                .put(put_group)
                .patch(patch_group)
                .delete(delete_group)),
        )
        .route("/scim/v2/{org}/Bulk", m(post(bulk::bulk)))
        .route("/scim/v2/{org}/Me", any(me))
        .merge(discovery::router(m))
        .route("/scim/v2/{org}", any(not_found))
        .route("/scim/v2/{org}/", any(not_found))
        .route("/scim/v2/{org}/{*rest}", any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new().merge(scim)
}

async fn method_not_allowed() -> ScimError {
    ScimError::MethodNotAllowed("method not allowed on this endpoint".into())
}

async fn not_found() -> ScimError {
    ScimError::NotFound("no such endpoint or resource".into())
}

async fn me() -> ScimError {
    ScimError::NotImplemented(
        "/Me is not implemented: tokens act for an organization, not a user".into(),
    )
}

/// Checks the bearer token against the org in the path; every failure looks the same, so a
/// caller learns nothing about orgs it has no token for.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    match caller(&state, &path, req.headers().clone()).await {
        Ok(ctx) => {
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

async fn caller(state: &AppState, path: &str, headers: HeaderMap) -> Result<Ctx, ScimError> {
    let org: Uuid = path
        .strip_prefix("/scim/v2/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|o| o.parse().ok())
        .ok_or(ScimError::Unauthorized)?;
    let presented = crate::api::bearer(&headers).ok_or(ScimError::Unauthorized)?;
    let at = state.hub.generation("api_tokens");
    match state
        .tokens
        .authenticate(&state.pool, presented, at)
        .await?
    {
        Some(c) if c.org_id == org && c.scope == Scope::Scim => {}
        _ => return Err(ScimError::Unauthorized),
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    Ok(Ctx {
        org,
        base: format!("{scheme}://{host}/scim/v2/{org}"),
    })
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .ok_or(ScimError::Unauthorized)
    }
}

/// A JSON request body: `application/json` or `application/scim+json`, within the size limit.
pub struct Body(pub Value);

impl FromRequest<AppState> for Body {
    type Rejection = ScimError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if essence != "application/json" && essence != MEDIA_TYPE {
                return Err(ScimError::syntax(format!(
                    "unsupported Content-Type {essence:?}: send application/scim+json or application/json"
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ScimError::TooLarge(format!(
                    "the request body is over the limit of {} bytes",
                    state.scim.max_body_bytes
                ))
            } else {
                ScimError::syntax(format!("cannot read the request body: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ScimError::syntax("the request body is empty"));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ScimError::syntax(format!("the body is not valid JSON: {e}")))
    }
}

/// The Portcullis-Min-Position a read must reflect.
pub struct MinPosition(pub Option<Position>);

impl FromRequestParts<AppState> for MinPosition {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match parts.headers.get(MIN_POSITION_HEADER) {
            None => Ok(MinPosition(None)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(|p| MinPosition(Some(p)))
                .ok_or_else(|| {
                    ScimError::syntax(format!("{MIN_POSITION_HEADER} must be a position: tx/seq"))
                }),
        }
    }
}

/// Waits until the read models reach `position` (503 after the configured timeout).
pub async fn wait(state: &AppState, position: Option<Position>) -> Result<(), ScimError> {
    if let Some(p) = position {
        state
            .hub
            .wait_for_all(&READ_MODELS, p, state.scim.wait_timeout)
            .await?;
    }
    Ok(())
}

/// What a read needs first: its Min-Position reached, and no read model it answers from
/// half-built after a reset (a 503 with Retry-After then, never a partial answer).
pub async fn wait_for_read(state: &AppState, position: Option<Position>) -> Result<(), ScimError> {
    wait(state, position).await?;
    match READ_MODELS.into_iter().find(|m| !state.hub.is_complete(m)) {
        Some(model) => Err(ScimError::Incomplete(model)),
        None => Ok(()),
    }
}

async fn wait_after_write(state: &AppState, position: Position) -> Result<(), ScimError> {
    match wait(state, Some(position)).await {
        Err(ScimError::NotCaughtUp(error)) => Err(ScimError::NotVisibleYet { error, position }),
        other => other,
    }
}

/// If-Match: `W/"3"`, `"3"` or `*` (any).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ScimError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    if s == "*" {
        return Ok(None);
    }
    let n = s.trim_start_matches("W/").trim_matches('"');
    n.parse().map(Some).map_err(|_| {
        ScimError::PreconditionFailed(format!("If-Match {s:?} is not a version of this resource"))
    })
}

fn params(q: &HashMap<String, String>, name: &str) -> Option<String> {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Builds a list query from query parameters or a SearchRequest body (same names).
fn list_query(get: impl Fn(&str) -> Option<Value>) -> Result<ListQuery, ScimError> {
    let int = |name: &str| -> Result<Option<i64>, ScimError> {
        match get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ScimError::value(format!("{name} must be an integer"))),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ScimError::value(format!("{name} must be an integer, not {s:?}"))),
            Some(other) => Err(ScimError::value(format!(
                "{name} must be an integer, not {other}"
            ))),
        }
    };
    let text = |name: &str| -> Result<Option<String>, ScimError> {
        match get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ScimError::syntax(format!(
                "{name} must be a string, not {other}"
            ))),
        }
    };
    let filter = match text("filter")? {
        Some(f) => Some(filter::parse(&f).map_err(ScimError::filter)?),
        None => None,
    };
    let sort_by = match text("sortBy")? {
        Some(s) => Some(
            filter::AttrPath::parse(s.trim())
                .map_err(|e| ScimError::value(format!("sortBy: {e}")))?,
        ),
        None => None,
    };
    let descending = match text("sortOrder")?.map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(s) if s == "ascending" => false,
        Some(s) if s == "descending" => true,
        Some(s) => {
            return Err(ScimError::value(format!(
                "sortOrder must be ascending or descending, not {s:?}"
            )))
        }
    };
    let count = int("count")?;
    let cursor = match get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => {
            return Err(ScimError::bad(
                "invalidCursor",
                format!("cursor must be a string, not {other}"),
            ))
        }
    };
    let start_index = int("startIndex")?;
    let count = match (&cursor, count) {
        (None, c) => c.unwrap_or(MAX_RESULTS).clamp(0, MAX_RESULTS),
        (Some(_), _) if start_index.is_some() => {
            return Err(ScimError::value(
                "startIndex and cursor are two ways of paging: send one of them",
            ))
        }
        (Some(_), None) => MAX_RESULTS,
        (Some(_), Some(c)) if (0..=MAX_RESULTS).contains(&c) => c,
        (Some(_), Some(c)) => {
            return Err(ScimError::bad(
                "invalidCount",
                format!(
                "count {c} is out of range: with a cursor it is 0 to {MAX_RESULTS} (maxPageSize)"
            ),
            ))
        }
    };
    Ok(ListQuery {
        filter,
        sort_by,
        descending,
        start_index: start_index.unwrap_or(1).max(1),
        count,
        cursor,
    })
}

fn list_response(page: read::Page, q: &ListQuery) -> Value {
    json!({
        "schemas": [schema::LIST],
        "totalResults": page.total,
        "itemsPerPage": page.resources.len(),
        "startIndex": q.start_index,
        "Resources": page.resources,
    })
}

/// A resource response: ETag, Location (on create), Portcullis-Position (on writes).
fn resource_response(
    status: StatusCode,
    resource: Value,
    version: i64,
    location: Option<String>,
    position: Option<Position>,
) -> Response {
    let mut res = (status, ScimJson(resource)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&read::etag(version)) {
        h.insert(header::ETAG, v);
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, l);
    }
    if let Some(p) = position.and_then(|p| HeaderValue::from_str(&p.to_string()).ok()) {
        h.insert(POSITION_HEADER, p);
    }
    res
}

fn position_only(status: StatusCode, position: Position) -> Response {
    let mut res = status.into_response();
    if let Ok(p) = HeaderValue::from_str(&position.to_string()) {
        res.headers_mut().insert(POSITION_HEADER, p);
    }
    res
}

fn selection(rt: &ResourceType, q: &HashMap<String, String>) -> Selection {
    Selection::parse(
        rt,
        params(q, "attributes").as_deref(),
        params(q, "excludedAttributes").as_deref(),
    )
}

async fn list(
    state: AppState,
    ctx: Ctx,
    rt: &'static ResourceType,
    min: Option<Position>,
    q: HashMap<String, String>,
) -> Result<Response, ScimError> {
    let lq = list_query(|k| params(&q, k).map(Value::String))?;
    one_type(&state, ctx, rt, min, lq, selection(rt, &q)).await
}

/// A list of one type, by index or by cursor.
async fn one_type(
    state: &AppState,
    ctx: Ctx,
    rt: &'static ResourceType,
    min: Option<Position>,
    lq: ListQuery,
    sel: Selection,
) -> Result<Response, ScimError> {
    let cursor = match &lq.cursor {
        Some(token) => Some(paging::check(state, &ctx, rt, &lq, token)?),
        None => None,
    };
    wait_for_read(state, min).await?;
    let client = state.pool.get().await?;
    let body = match cursor {
        Some(c) => paging::list(state, &client, &ctx, rt, &lq, &sel, &c).await?,
        None => list_response(read::list(&client, rt, &ctx, &lq, &sel).await?, &lq),
    };
    Ok(ScimJson(body).into_response())
}

async fn list_users(
    State(state): State<AppState>,
    ctx: Ctx,
    MinPosition(min): MinPosition,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    list(state, ctx, &USER_TYPE, min, q).await
}

async fn list_groups(
    State(state): State<AppState>,
    ctx: Ctx,
    MinPosition(min): MinPosition,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    list(state, ctx, &GROUP_TYPE, min, q).await
}

/// `attributes` in a SearchRequest: an array of names, or a comma-separated string.
fn names(v: Option<&Value>) -> Result<Option<String>, ScimError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|v| Some(v.join(",")))
            .ok_or_else(|| ScimError::syntax("attributes must be an array of strings")),
        Some(other) => Err(ScimError::syntax(format!(
            "attributes must be an array, not {other}"
        ))),
    }
}

fn search_request(body: &Value) -> Result<(ListQuery, Option<String>, Option<String>), ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::syntax("a SearchRequest must be an object"))?;
    let get = |k: &str| member(obj, k).cloned();
    let q = list_query(get)?;
    Ok((
        q,
        names(get("attributes").as_ref())?,
        names(get("excludedAttributes").as_ref())?,
    ))
}

async fn search(
    state: AppState,
    ctx: Ctx,
    rt: Option<&'static ResourceType>,
    min: Option<Position>,
    body: Value,
) -> Result<Response, ScimError> {
    let (q, attrs, excluded) = search_request(&body)?;
    if let Some(rt) = rt {
        let sel = Selection::parse(rt, attrs.as_deref(), excluded.as_deref());
        return one_type(&state, ctx, rt, min, q, sel).await;
    }
    if q.cursor.is_some() {
        return Err(ScimError::value(
            "cursor paging is per resource type: search /Users/.search or /Groups/.search",
        ));
    }
    wait_for_read(&state, min).await?;
    let client = state.pool.get().await?;
    let page = read::list_all(&client, &ctx, &q, attrs.as_deref(), excluded.as_deref()).await?;
    Ok(ScimJson(list_response(page, &q)).into_response())
}

async fn search_users(
    State(state): State<AppState>,
    ctx: Ctx,
    MinPosition(min): MinPosition,
    Body(body): Body,
) -> Result<Response, ScimError> {
    search(state, ctx, Some(&USER_TYPE), min, body).await
}

async fn search_groups(
    State(state): State<AppState>,
    ctx: Ctx,
    MinPosition(min): MinPosition,
    Body(body): Body,
) -> Result<Response, ScimError> {
    search(state, ctx, Some(&GROUP_TYPE), min, body).await
}

async fn search_all(
    State(state): State<AppState>,
    ctx: Ctx,
    MinPosition(min): MinPosition,
    Body(body): Body,
) -> Result<Response, ScimError> {
    search(state, ctx, None, min, body).await
}

async fn get_one(
    state: AppState,
    ctx: Ctx,
    rt: &'static ResourceType,
    id: String,
    min: Option<Position>,
    headers: HeaderMap,
    q: HashMap<String, String>,
) -> Result<Response, ScimError> {
    let not_found = || ScimError::NotFound(format!("{} {id} not found", rt.name));
    let uid: Uuid = id.parse().map_err(|_| not_found())?;
    wait_for_read(&state, min).await?;
    let client = state.pool.get().await?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(v) = read::version(&client, rt, &ctx, uid).await? {
            let tag = read::etag(v);
            if inm.split(',').any(|t| t.trim() == tag || t.trim() == "*") {
                let mut res = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(t) = HeaderValue::from_str(&tag) {
                    res.headers_mut().insert(header::ETAG, t);
                }
                return Ok(res);
            }
        }
    }
    let (resource, version) = read::by_id(&client, rt, &ctx, uid, &selection(rt, &q))
        .await?
        .ok_or_else(not_found)?;
    Ok(resource_response(
        StatusCode::OK,
        resource,
        version,
        None,
        None,
    ))
}

async fn get_user(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_, id)): Path<(String, String)>,
    MinPosition(min): MinPosition,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    get_one(state, ctx, &USER_TYPE, id, min, headers, q).await
}

async fn get_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_, id)): Path<(String, String)>,
    MinPosition(min): MinPosition,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    get_one(state, ctx, &GROUP_TYPE, id, min, headers, q).await
}

/// After a write: wait for the read models, read the resource back, answer with it.
async fn written(
    state: &AppState,
    ctx: &Ctx,
    rt: &'static ResourceType,
    w: crate::domain::Written,
    status: StatusCode,
    q: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    wait_after_write(state, w.position).await?;
    let client = state.pool.get().await?;
    let (resource, version) = read::by_id(&client, rt, ctx, w.id, &selection(rt, q))
        .await?
        .ok_or_else(|| {
            ScimError::NotFound(format!("{} {} was deleted meanwhile", rt.name, w.id))
        })?;
    if status == StatusCode::OK && params(q, "attributes").is_some_and(|a| a.trim().is_empty()) {
        // PATCH with an empty `attributes`: the client asked for no body.
        let mut res = position_only(StatusCode::NO_CONTENT, w.position);
        if let Ok(t) = HeaderValue::from_str(&read::etag(version)) {
            res.headers_mut().insert(header::ETAG, t);
        }
        return Ok(res);
    }
    let location =
        (status == StatusCode::CREATED).then(|| format!("{}/{}/{}", ctx.base, rt.endpoint, w.id));
    Ok(resource_response(
        status,
        resource,
        version,
        location,
        Some(w.position),
    ))
}

async fn create_user(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let w = write::create(&state, ctx.org, &USER_TYPE, &body).await?;
    written(&state, &ctx, &USER_TYPE, w, StatusCode::CREATED, &q).await
}

async fn create_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let w = write::create(&state, ctx.org, &GROUP_TYPE, &body).await?;
    written(&state, &ctx, &GROUP_TYPE, w, StatusCode::CREATED, &q).await
}

macro_rules! by_id_write {
    ($name:ident, $rt:expr, $op:ident) => {
        async fn $name(
            State(state): State<AppState>,
            ctx: Ctx,
            Path((_, id)): Path<(String, String)>,
            headers: HeaderMap,
            Query(q): Query<HashMap<String, String>>,
            Body(body): Body,
        ) -> Result<Response, ScimError> {
            let w = write::$op(&state, ctx.org, $rt, &id, if_match(&headers)?, &body).await?;
            written(&state, &ctx, $rt, w, StatusCode::OK, &q).await
        }
    };
}

by_id_write!(put_user, &USER_TYPE, replace);
by_id_write!(put_group, &GROUP_TYPE, replace);
by_id_write!(patch_user, &USER_TYPE, patch);
by_id_write!(patch_group, &GROUP_TYPE, patch);

async fn delete_one(
    state: AppState,
    ctx: Ctx,
    rt: &'static ResourceType,
    id: String,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    let w = write::delete(&state, ctx.org, rt, &id, if_match(&headers)?).await?;
    wait_after_write(&state, w.position).await?;
    Ok(position_only(StatusCode::NO_CONTENT, w.position))
}

async fn delete_user(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    delete_one(state, ctx, &USER_TYPE, id, headers).await
}

async fn delete_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    delete_one(state, ctx, &GROUP_TYPE, id, headers).await
}
