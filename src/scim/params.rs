//! List and search parameters: query strings and SearchRequest bodies become a
//! [`ListQuery`], pages become ListResponses.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::error::ScimError;
use super::filter;
use super::json::member;
use super::read::{self, ListQuery};
use super::resource::Selection;
use super::schema::{self, ResourceType};

/// The most resources one list response holds (advertised as filter.maxResults and as the
/// pagination's maxPageSize).
pub const MAX_RESULTS: i64 = 1000;

pub fn params(q: &HashMap<String, String>, name: &str) -> Option<String> {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// An integer parameter: a JSON number or a numeric string (absent or empty: None).
fn int(name: &str, v: Option<Value>) -> Result<Option<i64>, ScimError> {
    match v {
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
}

/// A string parameter (absent or empty: None).
fn text(name: &str, v: Option<Value>) -> Result<Option<String>, ScimError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ScimError::syntax(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

/// `sortOrder`: ascending (the default) or descending.
fn descending(v: Option<String>) -> Result<bool, ScimError> {
    match v.map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s == "ascending" => Ok(false),
        Some(s) if s == "descending" => Ok(true),
        Some(s) => Err(ScimError::value(format!(
            "sortOrder must be ascending or descending, not {s:?}"
        ))),
    }
}

/// The page size: clamped for index paging; with a cursor (RFC 9865) out of range is
/// invalidCount, and startIndex may not come with it.
fn page_size(
    cursor: Option<&String>,
    count: Option<i64>,
    start_index: Option<i64>,
) -> Result<i64, ScimError> {
    match (cursor, count) {
        (None, c) => Ok(c.unwrap_or(MAX_RESULTS).clamp(0, MAX_RESULTS)),
        (Some(_), _) if start_index.is_some() => Err(ScimError::value(
            "startIndex and cursor are two ways of paging: send one of them",
        )),
        (Some(_), None) => Ok(MAX_RESULTS),
        (Some(_), Some(c)) if (0..=MAX_RESULTS).contains(&c) => Ok(c),
        (Some(_), Some(c)) => Err(ScimError::bad(
            "invalidCount",
            format!(
                "count {c} is out of range: with a cursor it is 0 to {MAX_RESULTS} (maxPageSize)"
            ),
        )),
    }
}

/// Builds a list query from query parameters or a SearchRequest body (same names).
pub fn list_query(get: impl Fn(&str) -> Option<Value>) -> Result<ListQuery, ScimError> {
    let filter = match text("filter", get("filter"))? {
        Some(f) => Some(filter::parse(&f).map_err(|e| ScimError::filter(e.to_string()))?),
        None => None,
    };
    let sort_by = match text("sortBy", get("sortBy"))? {
        Some(s) => Some(
            filter::AttrPath::parse(s.trim())
                .map_err(|e| ScimError::value(format!("sortBy: {e}")))?,
        ),
        None => None,
    };
    let descending = descending(text("sortOrder", get("sortOrder"))?)?;
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
    let start_index = int("startIndex", get("startIndex"))?;
    let count = page_size(cursor.as_ref(), int("count", get("count"))?, start_index)?;
    Ok(ListQuery {
        filter,
        sort_by,
        descending,
        start_index: start_index.unwrap_or(1).max(1),
        count,
        cursor,
    })
}

pub fn list_response(page: read::Page, q: &ListQuery) -> Value {
    json!({
        "schemas": [schema::LIST],
        "totalResults": page.total,
        "itemsPerPage": page.resources.len(),
        "startIndex": q.start_index,
        "Resources": page.resources,
    })
}

pub fn selection(rt: &ResourceType, q: &HashMap<String, String>) -> Selection {
    Selection::parse(
        rt,
        params(q, "attributes").as_deref(),
        params(q, "excludedAttributes").as_deref(),
    )
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

pub fn search_request(
    body: &Value,
) -> Result<(ListQuery, Option<String>, Option<String>), ScimError> {
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
