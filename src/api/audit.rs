//! `GET /api/v1/orgs/{org}/audit`: the organization's audit trail (`eventstore::audit`) for
//! an audit-scope token of the org or an admin, newest or oldest first, filtered by resource,
//! event type, actor and time, in pages with opaque cursors bound to the org and the query.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::domain::DomainError;
use crate::eventstore::audit::{self, AuditQuery};
use crate::eventstore::Position;
use crate::http::auth::OrgAuditor;
use crate::http::telemetry::TrackedRoutes;
use crate::http::AppState;
use crate::signing::SigningKey;

/// Entries per page unless `count` says otherwise, and the most it may say.
pub const DEFAULT_COUNT: i64 = 100;
pub const MAX_COUNT: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new().tracked_route("/api/v1/orgs/{org}/audit", get(list))
}

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    resource: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// `newest` (the default) or `oldest` first.
    order: Option<String>,
    count: Option<String>,
    cursor: Option<String>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code: "invalid",
        detail: detail.into(),
    }
}

fn time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| invalid(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

fn short(name: &str, v: &Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 128 || s.contains('\0') => {
            Err(invalid(format!("{name} takes 1 to 128 characters")))
        }
        other => Ok(other.clone()),
    }
}

/// The query the parameters ask for, and the page size.
fn query(org: uuid::Uuid, p: &Params) -> Result<(AuditQuery, i64), ApiError> {
    let resource = p
        .resource
        .as_deref()
        .map(|r| r.parse().map_err(|_| invalid("resource must be an id")))
        .transpose()?;
    let newest_first = match p.order.as_deref() {
        None | Some("newest") => true,
        Some("oldest") => false,
        Some(_) => return Err(invalid("order is newest or oldest")),
    };
    let count = match p.count.as_deref() {
        None => DEFAULT_COUNT,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_COUNT).contains(n))
            .ok_or_else(|| invalid(format!("count is 1 to {MAX_COUNT}")))?,
    };
    let q = AuditQuery {
        org,
        resource,
        event_type: short("type", &p.event_type)?,
        actor: short("actor", &p.actor)?,
        since: time("since", &p.since)?,
        until: time("until", &p.until)?,
        newest_first,
    };
    Ok((q, count))
}

const CURSOR_VERSION: u8 = 1;

fn digest(q: &AuditQuery) -> [u8; 8] {
    let d = Sha256::digest(format!("audit|{}", q.digest_input()).as_bytes());
    d[..8].try_into().expect("8 bytes")
}

/// An opaque cursor after `at` for `q`: signed, so it cannot be forged or moved to another
/// org or query.
pub fn encode_cursor(key: &SigningKey, q: &AuditQuery, at: Position) -> String {
    let mut p = vec![CURSOR_VERSION];
    p.extend_from_slice(&digest(q));
    p.extend_from_slice(&at.tx_sql().to_be_bytes());
    p.extend_from_slice(&at.seq.to_be_bytes());
    key.seal(&p)
}

pub fn decode_cursor(key: &SigningKey, q: &AuditQuery, text: &str) -> Result<Position, ApiError> {
    let bad = || ApiError::BadRequest {
        code: "invalid_cursor",
        detail: "the cursor is not one this server issued for this org and query; \
                 send the next_cursor of the previous page with the same parameters"
            .into(),
    };
    let p = key
        .open(text, 128)
        .filter(|p| p.len() == 1 + 8 + 16 && p[0] == CURSOR_VERSION && p[1..9] == digest(q))
        .ok_or_else(bad)?;
    let int = |at: usize| i64::from_be_bytes(p[at..at + 8].try_into().expect("8 bytes"));
    Ok(Position::from_sql(int(9), int(17)))
}

async fn list(
    State(state): State<AppState>,
    caller: OrgAuditor<ApiError>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let (q, count) = query(caller.org, &p)?;
    let from = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_cursor(&state.cursor_key, &q, c)?),
        None => None,
    };
    let client = state.pool.get().await?;
    let entries = audit::page(&client, &q, from, count)
        .await
        .map_err(DomainError::from)?;
    let next = (entries.len() as i64 == count)
        .then(|| entries.last())
        .flatten()
        .map(|e| encode_cursor(&state.cursor_key, &q, e.at_position));
    Ok(Json(json!({"entries": entries, "next_cursor": next})))
}
