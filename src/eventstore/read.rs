//! Reading: batches below the horizon, an aggregate's events and snapshots, the head.

use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::StoreError;
use super::position::Position;
use super::types::{Aggregate, Batch, EventFilter, StoredEvent, SELECT_EVENTS};

/// Events after `after`, in `(tx, seq)` order, only from transactions below the horizon: no
/// transaction that is still open can later commit an event before the last one returned.
pub async fn read_after<C: GenericClient>(
    client: &C,
    after: Position,
    filter: &EventFilter,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(read_batch(client, after, filter, limit).await?.events)
}

/// Like [`read_after`], and also returns the horizon the read used (one statement, one
/// snapshot).
pub async fn read_batch<C: GenericClient>(
    client: &C,
    after: Position,
    filter: &EventFilter,
    limit: i64,
) -> Result<Batch, StoreError> {
    let mut cond = String::from("(e.tx, e.seq) > ($1, $2) AND e.tx < h.h");
    let tx = after.tx_sql();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&tx, &after.seq, &limit];
    if let Some(types) = &filter.event_types {
        params.push(types);
        cond.push_str(&format!(" AND e.event_type = ANY(${})", params.len()));
    }
    if let Some(agg) = &filter.aggregate {
        params.push(&agg.aggregate_type);
        params.push(&agg.id);
        cond.push_str(&format!(
            " AND e.aggregate_type = ${} AND e.aggregate_id = ${}",
            params.len() - 1,
            params.len()
        ));
    }
    if let Some(org) = &filter.org_id {
        params.push(org);
        cond.push_str(&format!(" AND e.org_id = ${}", params.len()));
    }
    // The LEFT JOIN keeps one row when there are no events, so the horizon still comes back.
    let sql = format!(
        "WITH h AS MATERIALIZED (SELECT eventstore.horizon() AS h) \
         SELECT h.h, ev.* FROM h LEFT JOIN LATERAL ( \
           SELECT e.tx, e.seq, e.org_id, e.aggregate_type, e.aggregate_id, e.version, \
                  e.event_type, e.payload, e.metadata, e.created_at \
             FROM eventstore.events e WHERE {cond} ORDER BY e.tx, e.seq LIMIT $3) ev ON true"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    let horizon = rows
        .first()
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .unwrap_or(0);
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_some())
        .map(|r| StoredEvent::from_row(r, 1))
        .collect();
    Ok(Batch { events, horizon })
}

/// By how many transaction ids stored positions (events, and the positions of readers that
/// registered in eventstore.position_holders) are ahead of the next one this cluster assigns:
/// above 0 only after a restore into a new cluster that was not rebased yet.
pub async fn positions_ahead<C: GenericClient>(client: &C) -> Result<u64, StoreError> {
    let row = client
        .query_one("SELECT eventstore.positions_ahead()", &[])
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// The last position readers can see now (below the horizon), or zero for an empty store.
pub async fn head<C: GenericClient>(client: &C) -> Result<Position, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT tx, seq FROM eventstore.events WHERE tx < (SELECT eventstore.horizon()) \
             ORDER BY tx DESC, seq DESC LIMIT 1",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[])
        .await?
        .map(|r| Position::from_sql(r.get(0), r.get(1)))
        .unwrap_or_default())
}

/// The aggregate's current version (0 when it has no events).
pub async fn load_version<C: GenericClient>(
    client: &C,
    aggregate: &Aggregate,
) -> Result<u64, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT coalesce(max(version), 0) FROM eventstore.events \
             WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .await?;
    let v: i64 = client
        .query_one(&stmt, &[&aggregate.aggregate_type, &aggregate.id])
        .await?
        .get(0);
    Ok(v.max(0) as u64)
}

/// The event at exactly `position`, if there is one.
pub async fn event_at<C: GenericClient>(
    client: &C,
    position: Position,
) -> Result<Option<StoredEvent>, StoreError> {
    let stmt = client
        .prepare_cached(&format!("{SELECT_EVENTS} WHERE tx = $1 AND seq = $2"))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&position.tx_sql(), &position.seq])
        .await?
        .map(|r| StoredEvent::from_row(&r, 0)))
}

/// The committed events of one aggregate after `version`, by version.
pub async fn load_after<C: GenericClient>(
    client: &C,
    aggregate: &Aggregate,
    version: u64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "{SELECT_EVENTS} WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3 \
             ORDER BY version"
        ))
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&aggregate.aggregate_type, &aggregate.id, &(version as i64)],
        )
        .await?;
    Ok(rows.iter().map(|r| StoredEvent::from_row(r, 0)).collect())
}

/// An aggregate's snapshot (eventstore.snapshots), as a pseudo-event of type
/// `<aggregate_type>.snapshot` at the version and position it covers.
pub async fn snapshot<C: GenericClient>(
    client: &C,
    aggregate: &Aggregate,
) -> Result<Option<StoredEvent>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT position_tx, position_seq, org_id, version, state, taken_at \
               FROM eventstore.snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&aggregate.aggregate_type, &aggregate.id])
        .await?
        .map(|r| StoredEvent {
            position: Position::from_sql(r.get(0), r.get(1)),
            org_id: r.get(2),
            aggregate: aggregate.clone(),
            version: r.get::<_, i64>(3).max(0) as u64,
            event_type: format!("{}.snapshot", aggregate.aggregate_type),
            payload: r.get(4),
            metadata: json!({}),
            created_at: r.get(5),
        }))
}

/// Stores a snapshot of `aggregate` as of `last` (the last event folded into `state`),
/// unless a newer one is there.
pub async fn save_snapshot<C: GenericClient>(
    client: &C,
    last: &StoredEvent,
    state: &Value,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO eventstore.snapshots AS s \
               (aggregate_type, aggregate_id, org_id, version, position_tx, position_seq, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
               SET org_id = excluded.org_id, version = excluded.version, \
                   position_tx = excluded.position_tx, position_seq = excluded.position_seq, \
                   state = excluded.state, taken_at = now() \
             WHERE s.version < excluded.version",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &last.aggregate.aggregate_type,
                &last.aggregate.id,
                &last.org_id,
                &(last.version as i64),
                &last.position.tx_sql(),
                &last.position.seq,
                state,
            ],
        )
        .await?;
    Ok(())
}

/// Every committed event of one aggregate, by version.
pub async fn load<C: GenericClient>(
    client: &C,
    aggregate: &Aggregate,
) -> Result<Vec<StoredEvent>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "{SELECT_EVENTS} WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY version"
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&aggregate.aggregate_type, &aggregate.id])
        .await?;
    Ok(rows.iter().map(|r| StoredEvent::from_row(r, 0)).collect())
}

/// Every committed event of one type, in log order (for small, whole-log listings such as
/// the organizations).
pub async fn load_of_type<C: GenericClient>(
    client: &C,
    event_type: &str,
) -> Result<Vec<StoredEvent>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "{SELECT_EVENTS} WHERE event_type = $1 ORDER BY tx, seq"
        ))
        .await?;
    let rows = client.query(&stmt, &[&event_type]).await?;
    Ok(rows.iter().map(|r| StoredEvent::from_row(r, 0)).collect())
}

/// Which of `ids` are aggregates of one of `types` in `org_id` whose history holds none of
/// the `ending` event types (they exist now), with their type.
pub async fn existing<C: GenericClient>(
    client: &C,
    org_id: Uuid,
    types: &[&str],
    ids: &[Uuid],
    ending: &[&str],
) -> Result<Vec<(Uuid, String)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT aggregate_id, aggregate_type FROM eventstore.events \
             WHERE org_id = $1 AND aggregate_type = ANY($2) AND aggregate_id = ANY($3) \
             GROUP BY aggregate_id, aggregate_type \
             HAVING NOT bool_or(event_type = ANY($4))",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&org_id, &types, &ids, &ending])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Takes the aggregate's write lock for the rest of `tx`: the key eventstore.append takes
/// for an expected version, so a push in the same transaction re-enters it and writers of
/// one aggregate take turns.
pub async fn lock_aggregate<C: GenericClient>(
    tx: &C,
    aggregate: &Aggregate,
) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&aggregate.to_string()],
    )
    .await?;
    Ok(())
}
