//! The SCIM endpoints on resources: one handler per action for every resource type (the
//! type is the path's, see [`Resource`]), lists and searches, reads, writes and deletes.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use super::error::ScimError;
use super::extract::{if_match, Answer, Body, MinPosition, Resource};
use super::json::ScimJson;
use super::params::{list_query, list_response, params, search_request, selection};
use super::read::{self, Ctx, ListQuery};
use super::resource::Selection;
use super::schema::ResourceType;
use super::wait::{confirm_after_write, wait_after_write, wait_for_read};
use super::{paging, write};
use crate::domain::DomainError;
use crate::eventstore::{self, Position};
use crate::http::position::POSITION_HEADER;
use crate::http::AppState;

/// A resource response: ETag, Location (on create), Portcullis-Position (on writes).
pub(super) fn resource_response(
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

pub(super) fn position_only(status: StatusCode, position: Position) -> Response {
    let mut res = status.into_response();
    if let Ok(p) = HeaderValue::from_str(&position.to_string()) {
        res.headers_mut().insert(POSITION_HEADER, p);
    }
    res
}

/// `GET /{resource}`: a list, by index or by cursor.
pub async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    min: MinPosition,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let lq = list_query(|k| params(&q, k).map(Value::String))?;
    one_type(&state, ctx, rt, min.position, lq, selection(rt, &q)).await
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
    let client = state.pool.get().await?;
    wait_for_read(state, &client, min).await?;
    let body = match cursor {
        Some(c) => paging::list(state, &client, &ctx, rt, &lq, &sel, &c).await?,
        None => list_response(read::list(&client, rt, &ctx, &lq, &sel).await?, &lq),
    };
    Ok(ScimJson(body).into_response())
}

/// `POST /{resource}/.search`: a SearchRequest on one type.
pub async fn search(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    min: MinPosition,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let (q, attrs, excluded) = search_request(&body)?;
    let sel = Selection::parse(rt, attrs.as_deref(), excluded.as_deref());
    one_type(&state, ctx, rt, min.position, q, sel).await
}

/// `POST /.search`: users and groups together.
pub async fn search_all(
    State(state): State<AppState>,
    ctx: Ctx,
    min: MinPosition,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let (q, attrs, excluded) = search_request(&body)?;
    if q.cursor.is_some() {
        return Err(ScimError::value(
            "cursor paging is per resource type: search /Users/.search or /Groups/.search",
        ));
    }
    let client = state.pool.get().await?;
    wait_for_read(&state, &client, min.position).await?;
    let page = read::list_all(&client, &ctx, &q, attrs.as_deref(), excluded.as_deref()).await?;
    Ok(ScimJson(list_response(page, &q)).into_response())
}

/// `GET /{resource}/{id}` (304 on a matching If-None-Match).
pub async fn get_one(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    Path((_, id)): Path<(String, String)>,
    min: MinPosition,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let not_found = || ScimError::NotFound(format!("{} {id} not found", rt.name));
    let uid: Uuid = id.parse().map_err(|_| not_found())?;
    let client = state.pool.get().await?;
    wait_for_read(&state, &client, min.position).await?;
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

/// Runs `write`, then answers with the resource as [`written`] reads it back. The write's
/// in-process wake-ups are held until its read back is queued, so that the live round they
/// start carries it. The handlers' writes append through a store that defers their WAL flush
/// (`EventStore::deferring`): the answer waits for the read models, whose synchronous commit
/// makes the write durable too, and a 503 that says it is kept flushes first
/// (`wait::after_write`).
async fn answer_write(
    state: &AppState,
    ctx: &Ctx,
    rt: &'static ResourceType,
    write: impl std::future::Future<Output = Result<crate::domain::Written, ScimError>>,
    status: StatusCode,
    answer: Answer,
) -> Result<Response, ScimError> {
    state
        .store
        .holding_wakes(async {
            let w = write.await?;
            written(state, ctx, rt, w, status, answer).await
        })
        .await
}

/// After a write: wait for the read models, read the resource back, answer with it.
async fn written(
    state: &AppState,
    ctx: &Ctx,
    rt: &'static ResourceType,
    w: crate::domain::Written,
    status: StatusCode,
    answer: Answer,
) -> Result<Response, ScimError> {
    let q = &answer.query;
    let sel = selection(rt, q);
    let mut read = None;
    let ride = answer.readbacks.ride(rt, ctx, w.id, &sel, w.position);
    // The live round may begin now: the read back is in its queue.
    state.store.release_wakes();
    if let Some(ride) = ride {
        let reached = wait_after_write(state, w.position);
        let row = answer.readbacks.answer(ride, reached).await?;
        read = row.and_then(|r| read::rendered(rt, ctx, r, &sel));
    }
    if read.is_none() {
        wait_after_write(state, w.position).await?;
        // Read from a model that holds the write in the database, not only in the hub.
        read = answer
            .readbacks
            .by_id_at(rt, ctx, w.id, &sel, w.position)
            .await?;
    }
    let (resource, version) = match read {
        Some(read) => read,
        None => read_confirmed(state, ctx, rt, w.id, &sel, w.position).await?,
    };
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

/// A write's read back that found nothing: deleted meanwhile, or the model lost the write in a
/// crash of PostgreSQL and may since have applied it again. The read alone cannot tell which
/// (its statement skips a row whose model is behind), and a model that catches up between it
/// and a later check would turn a write that is there into a 404. So this confirms the
/// position first and then reads on the same connection: positions only move forward until a
/// crash, and a crash ends the connection. Where commits are asynchronous, a crash can take
/// the write itself, and its transaction id goes to a later one: the models then pass its
/// position without it. Only a write whose event is still in the log was deleted meanwhile.
async fn read_confirmed(
    state: &AppState,
    ctx: &Ctx,
    rt: &'static ResourceType,
    id: Uuid,
    sel: &Selection,
    position: Position,
) -> Result<(Value, i64), ScimError> {
    let client = state.pool.get().await?;
    confirm_after_write(state, &client, position).await?;
    if let Some(read) = read::by_id_at(&client, rt, ctx, id, sel, position).await? {
        return Ok(read);
    }
    let logged = eventstore::event_at(&client, position)
        .await
        .map_err(DomainError::from)?;
    match logged {
        Some(e) if e.aggregate.id == id => Err(ScimError::NotFound(format!(
            "{} {id} was deleted meanwhile",
            rt.name
        ))),
        _ => Err(ScimError::Lost(position)),
    }
}

/// `POST /{resource}`.
pub async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    answer: Answer,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let store = state.store.deferring();
    let write = write::create(&state, &store, ctx.org, rt, &body);
    answer_write(&state, &ctx, rt, write, StatusCode::CREATED, answer).await
}

/// `PUT /{resource}/{id}`.
pub async fn replace(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    answer: Answer,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let store = state.store.deferring();
    let write = write::replace(&state, &store, ctx.org, rt, &id, if_match(&headers)?, &body);
    answer_write(&state, &ctx, rt, write, StatusCode::OK, answer).await
}

/// `PATCH /{resource}/{id}`.
pub async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    answer: Answer,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let store = state.store.deferring();
    let write = write::patch(&state, &store, ctx.org, rt, &id, if_match(&headers)?, &body);
    answer_write(&state, &ctx, rt, write, StatusCode::OK, answer).await
}

/// `DELETE /{resource}/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Resource(rt): Resource,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    let store = state.store.deferring();
    let w = write::delete(&store, ctx.org, rt, &id, if_match(&headers)?).await?;
    wait_after_write(&state, w.position).await?;
    Ok(position_only(StatusCode::NO_CONTENT, w.position))
}
