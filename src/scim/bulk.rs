//! POST /Bulk (RFC 7644 §3.7): operations in order, `bulkId` references to resources
//! created earlier in the request, `failOnErrors`, and one wait for the read models at the end.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::ScimError;
use super::extract::Body;
use super::json::ScimJson;
use super::read::Ctx;
use super::schema::{self, ResourceType, GROUP_TYPE, USER_TYPE};
use super::wait::wait;
use super::write;
use crate::http::position::POSITION_HEADER;

/// Whether the read models reached a Bulk request's writes before it answered.
pub const WAIT_HEADER: &str = "portcullis-wait";
const WAIT_COMPLETE: &str = "complete";
const WAIT_TIMED_OUT: &str = "timed-out";
use crate::domain::provenance;
use crate::eventstore::Position;
use crate::http::AppState;

use super::json::member as get;

/// Replaces `bulkId:x` strings with the ids they stand for.
fn substitute(v: &Value, ids: &HashMap<String, String>) -> Result<Value, ScimError> {
    Ok(match v {
        Value::String(s) => match s.strip_prefix("bulkId:") {
            Some(b) => Value::String(ids.get(b).cloned().ok_or_else(|| {
                ScimError::value(format!("bulkId {b:?} names no resource created before it"))
            })?),
            None => v.clone(),
        },
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, ids))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, ids)?)))
                .collect::<Result<_, ScimError>>()?,
        ),
        other => other.clone(),
    })
}

fn resource_type(segment: &str) -> Option<&'static ResourceType> {
    [&USER_TYPE, &GROUP_TYPE]
        .into_iter()
        .find(|rt| rt.endpoint.eq_ignore_ascii_case(segment))
}

struct Done {
    status: StatusCode,
    location: Option<String>,
    position: Position,
    id: String,
}

async fn one(
    state: &AppState,
    ctx: &Ctx,
    op: &Map<String, Value>,
    ids: &HashMap<String, String>,
) -> Result<Done, ScimError> {
    let method = get(op, "method")
        .and_then(Value::as_str)
        .ok_or_else(|| ScimError::syntax("every operation needs a method"))?
        .to_ascii_uppercase();
    let path = get(op, "path")
        .and_then(Value::as_str)
        .ok_or_else(|| ScimError::syntax("every operation needs a path"))?;
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(
            |seg| match substitute(&Value::String(seg.to_string()), ids)? {
                Value::String(s) => Ok(s),
                _ => unreachable!("a string substitutes to a string"),
            },
        )
        .collect::<Result<_, ScimError>>()?;
    let mut segments = segments.iter().map(String::as_str);
    let rt = segments
        .next()
        .and_then(resource_type)
        .ok_or_else(|| ScimError::path(format!("bulk path {path:?} is not /Users or /Groups")))?;
    let id = segments.next().map(str::to_string);
    if segments.next().is_some() {
        return Err(ScimError::path(format!("bulk path {path:?} is too long")));
    }
    let data = || -> Result<Value, ScimError> {
        substitute(
            get(op, "data").ok_or_else(|| ScimError::syntax(format!("{method} needs data")))?,
            ids,
        )
    };
    let version = match get(op, "version").and_then(Value::as_str) {
        None => None,
        Some(v) => Some(
            v.trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u64>()
                .map_err(|_| {
                    ScimError::PreconditionFailed(format!("version {v:?} does not match"))
                })?,
        ),
    };
    let (status, w) = match (method.as_str(), id) {
        ("POST", None) => (
            StatusCode::CREATED,
            write::create(state, &state.store, ctx.org, rt, &data()?).await?,
        ),
        ("PUT", Some(id)) => (
            StatusCode::OK,
            write::replace(state, &state.store, ctx.org, rt, &id, version, &data()?).await?,
        ),
        ("PATCH", Some(id)) => (
            StatusCode::OK,
            write::patch(state, &state.store, ctx.org, rt, &id, version, &data()?).await?,
        ),
        ("DELETE", Some(id)) => (
            StatusCode::NO_CONTENT,
            write::delete(&state.store, ctx.org, rt, &id, version).await?,
        ),
        (m, _) => {
            return Err(ScimError::syntax(format!(
                "{m} {path}: bulk supports POST /Users|/Groups and PUT, PATCH, DELETE /Users|/Groups/{{id}}"
            )))
        }
    };
    Ok(Done {
        status,
        location: (status != StatusCode::NO_CONTENT)
            .then(|| format!("{}/{}/{}", ctx.base, rt.endpoint, w.id)),
        position: w.position,
        id: w.id.to_string(),
    })
}

/// The BulkRequest's operations (within maxOperations) and its failOnErrors.
fn request<'b>(state: &AppState, body: &'b Value) -> Result<(&'b [Value], Option<u64>), ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::syntax("a BulkRequest must be an object"))?;
    let ops = get(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::syntax("a BulkRequest needs an Operations array"))?;
    let max = state.scim.max_bulk_operations;
    if ops.len() > max {
        return Err(ScimError::TooLarge(format!(
            "the request has {} operations, over maxOperations {max}",
            ops.len()
        )));
    }
    let fail_on_errors = match get(obj, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| ScimError::value("failOnErrors must be a positive integer"))?,
        ),
    };
    Ok((ops, fail_on_errors))
}

pub async fn bulk(
    State(state): State<AppState>,
    ctx: Ctx,
    Body(body): Body,
) -> Result<Response, ScimError> {
    let (ops, fail_on_errors) = request(&state, &body)?;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut results = Vec::new();
    let mut errors = 0u64;
    let mut last = None::<Position>;
    for op in ops {
        let op = op
            .as_object()
            .ok_or_else(|| ScimError::syntax("each operation must be an object"))?;
        let method = get(op, "method").cloned().unwrap_or(Value::Null);
        let bulk_id = get(op, "bulkId")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut result = json!({"method": method});
        if let Some(b) = &bulk_id {
            result["bulkId"] = json!(b);
        }
        // Each operation's events name it (and its bulkId) beside the request's fields.
        let path = get(op, "path").and_then(Value::as_str).unwrap_or_default();
        let what = format!("Bulk {} {}", method.as_str().unwrap_or_default(), path);
        let done = provenance::bulk_operation(
            bulk_id.as_deref(),
            &provenance::bounded(&what, 256),
            one(&state, &ctx, op, &ids),
        )
        .await;
        match done {
            Ok(done) => {
                if let Some(b) = bulk_id {
                    ids.insert(b, done.id.clone());
                }
                if let Some(l) = done.location {
                    result["location"] = json!(l);
                }
                result["status"] = json!(done.status.as_u16().to_string());
                last = last.max(Some(done.position));
            }
            Err(e) => {
                result["status"] = json!(e.status().as_u16().to_string());
                result["response"] = e.body();
                errors += 1;
            }
        }
        results.push(result);
        if fail_on_errors.is_some_and(|n| errors >= n) {
            break;
        }
    }
    // The operations are committed whatever the wait gives: a timeout must not hide their
    // results (a client retrying the whole request would write twice), so it is stated in
    // a header beside the position to wait for.
    let outcome = match wait(&state, last).await {
        Ok(()) => WAIT_COMPLETE,
        Err(ScimError::NotCaughtUp(e)) => {
            tracing::warn!(error = %crate::error_chain(&e), "bulk: read models not caught up; results returned");
            WAIT_TIMED_OUT
        }
        Err(e) => return Err(e),
    };
    let mut res = ScimJson(json!({"schemas": [schema::BULK_RESPONSE], "Operations": results}))
        .into_response();
    res.headers_mut()
        .insert(WAIT_HEADER, HeaderValue::from_static(outcome));
    if let Some(p) = last.and_then(|p| HeaderValue::from_str(&p.to_string()).ok()) {
        res.headers_mut().insert(POSITION_HEADER, p);
    }
    Ok(res)
}
