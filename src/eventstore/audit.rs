//! The audit trail: one organization's events with who and why (`eventstore.audit`, the
//! payload's secrets left out), filtered, newest or oldest first, in pages by position. Only
//! events below the horizon are read, so a client paging oldest first never skips one that
//! commits late.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::error::StoreError;
use super::position::Position;

/// Which of an organization's events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub org: Uuid,
    /// One resource's history (a user, a group, a token, the org).
    pub resource: Option<Uuid>,
    pub event_type: Option<String>,
    /// A token id, or an actor kind (`cli`, `bootstrap_admin`, ...).
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub newest_first: bool,
}

impl AuditQuery {
    /// What identifies the query apart from its position (a cursor is bound to it).
    pub fn digest_input(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            self.org,
            self.resource,
            self.event_type,
            self.actor,
            self.since.map(|t| t.timestamp_micros()),
            self.until.map(|t| t.timestamp_micros()),
            self.newest_first
        )
    }
}

/// One change.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub position: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub version: i64,
    pub event_type: String,
    pub payload: Value,
    pub actor: Option<Value>,
    pub request_id: Option<String>,
    pub operation: Option<String>,
    pub bulk_id: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub at: DateTime<Utc>,
    #[serde(skip)]
    pub at_position: Position,
}

/// Resource types a resource id is looked up under (the log's index leads with the type).
const RESOURCE_TYPES: [&str; 4] = ["user", "group", "token", "org"];

/// Up to `limit` entries of `q`, after `from` in the query's order.
pub async fn page<C: GenericClient>(
    client: &C,
    q: &AuditQuery,
    from: Option<Position>,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let types: Vec<&str> = RESOURCE_TYPES.to_vec();
    let from_tx = from.map(|p| p.tx_sql());
    let from_seq = from.map(|p| p.seq);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.org, &limit];
    let mut cond = String::from("a.org_id = $1 AND a.tx < eventstore.horizon()");
    if let Some(r) = &q.resource {
        params.push(r);
        params.push(&types);
        let n = params.len();
        cond += &format!(
            " AND a.resource_id = ${} AND a.resource_type = ANY(${n})",
            n - 1
        );
    }
    for (value, column) in [(&q.event_type, "event_type"), (&q.actor, "actor_id")] {
        if let Some(v) = value {
            params.push(v);
            cond += &format!(" AND a.{column} = ${}", params.len());
        }
    }
    for (value, op) in [(&q.since, ">="), (&q.until, "<")] {
        if let Some(v) = value {
            params.push(v);
            cond += &format!(" AND a.at {op} ${}", params.len());
        }
    }
    let (cmp, order) = if q.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let (Some(tx), Some(seq)) = (&from_tx, &from_seq) {
        params.push(tx);
        params.push(seq);
        let n = params.len();
        cond += &format!(" AND (a.tx, a.seq) {cmp} (${}, ${n})", n - 1);
    }
    let sql = format!(
        "SELECT a.tx, a.seq, a.resource_type, a.resource_id, a.version, a.event_type, \
                a.payload, a.actor, a.request_id, a.operation, a.bulk_id, a.client_addr, \
                a.user_agent, a.at \
           FROM eventstore.audit a WHERE {cond} \
          ORDER BY a.tx {order}, a.seq {order} LIMIT $2"
    );
    // Client-shaped SQL: run unnamed, so nothing stays prepared per shape.
    let rows = client.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let at_position = Position::from_sql(r.get(0), r.get(1));
            AuditEntry {
                position: at_position.to_string(),
                resource_type: r.get(2),
                resource_id: r.get(3),
                version: r.get(4),
                event_type: r.get(5),
                payload: r.get(6),
                actor: r.get(7),
                request_id: r.get(8),
                operation: r.get(9),
                bulk_id: r.get(10),
                client_addr: r.get(11),
                user_agent: r.get(12),
                at: r.get(13),
                at_position,
            }
        })
        .collect())
}
