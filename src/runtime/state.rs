//! State tracking: what projections.projection_states, projections.failed_events and the
//! projections.health view say, as Rust values. The SQL is the source; these only read it
//! (and call its functions), so psql and the API always agree.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use uuid::Uuid;

use super::tx::Tx;
use super::{Projection, ProjectionError};
use crate::clock::Clock;
use crate::eventstore::{self, Position};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionState {
    pub name: String,
    pub position: Position,
    pub event_types: Option<Vec<String>>,
    pub event_timestamp: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub last_aggregate_type: Option<String>,
    pub last_aggregate_id: Option<Uuid>,
    pub last_version: Option<i64>,
    pub events_applied: i64,
}

const STATE_COLUMNS: &str = "name, position_tx, position_seq, event_types, event_timestamp, \
    updated_at, last_aggregate_type, last_aggregate_id, last_version, events_applied";

impl ProjectionState {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        ProjectionState {
            name: r.get(0),
            position: Position::from_sql(r.get(1), r.get(2)),
            event_types: r.get(3),
            event_timestamp: r.get(4),
            updated_at: r.get(5),
            last_aggregate_type: r.get(6),
            last_aggregate_id: r.get(7),
            last_version: r.get(8),
            events_applied: r.get(9),
        }
    }
}

pub async fn state<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Option<ProjectionState>, ProjectionError> {
    let row = client
        .query_opt(
            &format!("SELECT {STATE_COLUMNS} FROM projections.projection_states WHERE name = $1"),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(ProjectionState::from_row))
}

pub async fn states<C: GenericClient>(client: &C) -> Result<Vec<ProjectionState>, ProjectionError> {
    let rows = client
        .query(
            &format!("SELECT {STATE_COLUMNS} FROM projections.projection_states ORDER BY name"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(ProjectionState::from_row).collect())
}

/// created_at of the last event the projection applied.
pub async fn last_event_timestamp<C: GenericClient>(
    client: &C,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ProjectionError> {
    Ok(state(client, name)
        .await?
        .ok_or_else(|| ProjectionError::Unknown(name.into()))?
        .event_timestamp)
}

/// The alert thresholds behind the status column (projections.settings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    pub lag_events: i64,
    pub lag_seconds: f64,
    pub stall_seconds: f64,
    /// Per projection: (name, lag_events, lag_seconds), overriding the two above.
    pub per_projection: Vec<(String, i64, f64)>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            lag_events: 1000,
            lag_seconds: 30.0,
            stall_seconds: 60.0,
            per_projection: Vec::new(),
        }
    }
}

/// Parses `users=500:10,groups=200:5` (name=events:seconds).
pub fn parse_lag_overrides(s: &str) -> Result<Vec<(String, i64, f64)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let bad = || format!("{p:?}: expected name=events:seconds, e.g. users=500:10");
            let (name, limits) = p.split_once('=').ok_or_else(bad)?;
            let (events, seconds) = limits.split_once(':').ok_or_else(bad)?;
            let events: i64 = events.trim().parse().map_err(|_| bad())?;
            let seconds: f64 = seconds.trim().parse().map_err(|_| bad())?;
            if name.trim().is_empty() || events < 0 || seconds.is_nan() || seconds < 0.0 {
                return Err(bad());
            }
            Ok((name.trim().to_string(), events, seconds))
        })
        .collect()
}

impl Thresholds {
    pub async fn store<C: GenericClient>(&self, client: &C) -> Result<(), ProjectionError> {
        client
            .execute(
                "UPDATE projections.settings SET lag_events = $1, lag_seconds = $2, stall_seconds = $3",
                &[&self.lag_events, &self.lag_seconds, &self.stall_seconds],
            )
            .await?;
        let names: Vec<&str> = self.per_projection.iter().map(|p| p.0.as_str()).collect();
        let events: Vec<i64> = self.per_projection.iter().map(|p| p.1).collect();
        let seconds: Vec<f64> = self.per_projection.iter().map(|p| p.2).collect();
        client
            .execute(
                "DELETE FROM projections.thresholds WHERE projection <> ALL($1)",
                &[&names],
            )
            .await?;
        client
            .execute(
                "INSERT INTO projections.thresholds (projection, lag_events, lag_seconds) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[]) \
                 ON CONFLICT (projection) DO UPDATE \
                 SET lag_events = excluded.lag_events, lag_seconds = excluded.lag_seconds",
                &[&names, &events, &seconds],
            )
            .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionHealth {
    pub name: String,
    pub position: String,
    pub events_behind: i64,
    pub seconds_behind: f64,
    pub failed: i64,
    pub dead_lettered: i64,
    pub status: String,
    pub updated_at: DateTime<Utc>,
    /// A blue/green rebuild under way.
    pub rebuild: Option<RebuildProgress>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildProgress {
    /// Events of its types the copy has still to read.
    pub events_behind: i64,
    /// Seconds until caught up, at the pace so far.
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub projections: Vec<ProjectionHealth>,
    pub horizon_age_seconds: f64,
}

/// The projections.health view.
pub async fn health<C: GenericClient>(client: &C) -> Result<HealthReport, ProjectionError> {
    let rows = client
        .query(
            "SELECT name, position, events_behind, seconds_behind, failed, dead_lettered, status, \
                    updated_at, horizon_age_seconds, rebuilding, rebuild_events_behind, \
                    rebuild_eta_seconds FROM projections.health ORDER BY name",
            &[],
        )
        .await?;
    let mut horizon_age_seconds = 0.0;
    let projections = rows
        .iter()
        .map(|r| {
            horizon_age_seconds = r.get(8);
            ProjectionHealth {
                name: r.get(0),
                position: r.get(1),
                events_behind: r.get(2),
                seconds_behind: r.get(3),
                failed: r.get(4),
                dead_lettered: r.get(5),
                status: r.get(6),
                updated_at: r.get(7),
                rebuild: r.get::<_, bool>(9).then(|| RebuildProgress {
                    events_behind: r.get(10),
                    eta_seconds: r.get(11),
                }),
            }
        })
        .collect();
    if rows.is_empty() {
        horizon_age_seconds = client
            .query_one(
                "SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0)::double precision \
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
    }
    Ok(HealthReport {
        projections,
        horizon_age_seconds,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lag {
    pub events: i64,
    pub seconds: f64,
}

/// Events and seconds behind the head, as projections.health counts them.
pub async fn lag<C: GenericClient>(client: &C, name: &str) -> Result<Lag, ProjectionError> {
    let row = client
        .query_opt(
            "SELECT events_behind, seconds_behind FROM projections.health WHERE name = $1",
            &[&name],
        )
        .await?
        .ok_or_else(|| ProjectionError::Unknown(name.into()))?;
    Ok(Lag {
        events: row.get(0),
        seconds: row.get(1),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedEvent {
    pub projection: String,
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    pub event_type: String,
    pub error: String,
    pub failure_count: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

pub async fn failed_events<C: GenericClient>(
    client: &C,
    projection: &str,
) -> Result<Vec<FailedEvent>, ProjectionError> {
    let rows = client
        .query(
            "SELECT projection, event_tx, event_seq, aggregate_type, aggregate_id, aggregate_version, \
                    event_type, error, failure_count, first_failed_at, last_failed_at, next_attempt_at, \
                    dead_lettered_at, acknowledged_at \
               FROM projections.failed_events WHERE projection = $1 ORDER BY event_tx, event_seq",
            &[&projection],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| FailedEvent {
            projection: r.get(0),
            position: Position::from_sql(r.get(1), r.get(2)),
            aggregate_type: r.get(3),
            aggregate_id: r.get(4),
            aggregate_version: r.get(5),
            event_type: r.get(6),
            error: r.get(7),
            failure_count: r.get(8),
            first_failed_at: r.get(9),
            last_failed_at: r.get(10),
            next_attempt_at: r.get(11),
            dead_lettered_at: r.get(12),
            acknowledged_at: r.get(13),
        })
        .collect())
}

/// Empties the read model and rewinds the projection; a running projector replays it.
pub async fn reset(pool: &Pool, projection: &dyn Projection) -> Result<(), ProjectionError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    projection
        .reset(&tx)
        .await
        .map_err(|source| ProjectionError::Reduce {
            projection: projection.name().into(),
            source,
        })?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryReport {
    pub applied: usize,
    pub still_failing: usize,
}

/// Re-applies the projection's dead-lettered events in log order, each in a savepoint:
/// those that now apply are forgotten; the others stay dead-lettered with the new error.
/// For a projection that [replays aggregates](Projection::replays_aggregates) a dead letter
/// goes again with its aggregate's later events, so a row removed later stays removed.
/// Holds the projection's lock, so it never runs beside a batch.
pub async fn retry_failed(
    pool: &Pool,
    projection: &dyn Projection,
    clock: &dyn Clock,
) -> Result<RetryReport, ProjectionError> {
    let name = projection.name();
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    tx.execute(super::context::LOCK_SQL, &[&name]).await?;
    tx.execute(super::LIVE_SESSION_SQL, &[]).await?;
    let upto = state(&tx, name)
        .await?
        .ok_or_else(|| ProjectionError::Unknown(name.into()))?
        .position;
    let dead: Vec<Position> = tx
        .query(
            "SELECT event_tx, event_seq FROM projections.failed_events \
              WHERE projection = $1 AND dead_lettered_at IS NOT NULL ORDER BY event_tx, event_seq",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| Position::from_sql(r.get(0), r.get(1)))
        .collect();
    let mut report = RetryReport {
        applied: 0,
        still_failing: 0,
    };
    for at in &dead {
        let Some(event) = eventstore::event_at(&tx, *at).await? else {
            continue;
        };
        let mut events = vec![event];
        if projection.replays_aggregates() {
            events.extend(aggregate_tail(&tx, projection, &events[0], upto, &dead).await?);
        }
        let refs: Vec<&eventstore::StoredEvent> = events.iter().collect();
        let sp = tx.savepoint("retry").await?;
        let result = projection.apply(&Tx::from(&sp), &refs).await;
        let (etx, eseq) = (at.tx_sql(), at.seq);
        match result {
            Ok(()) => {
                sp.commit().await?;
                tx.execute(
                    "DELETE FROM projections.failed_events WHERE projection = $1 AND event_tx = $2 AND event_seq = $3",
                    &[&name, &etx, &eseq],
                )
                .await?;
                report.applied += 1;
            }
            Err(e) => {
                sp.rollback().await?;
                tx.execute(
                    "UPDATE projections.failed_events \
                        SET failure_count = failure_count + 1, error = $4, last_failed_at = $5, acknowledged_at = NULL \
                      WHERE projection = $1 AND event_tx = $2 AND event_seq = $3",
                    &[&name, &etx, &eseq, &crate::error_chain(&e), &clock.now()],
                )
                .await?;
                report.still_failing += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(report)
}

/// The aggregate's later events of the projection's types that the projection has already
/// passed (up to `upto`), leaving out other dead letters (they get their own turn).
async fn aggregate_tail<C: GenericClient>(
    client: &C,
    projection: &dyn Projection,
    first: &eventstore::StoredEvent,
    upto: Position,
    dead: &[Position],
) -> Result<Vec<eventstore::StoredEvent>, ProjectionError> {
    let filter = eventstore::EventFilter {
        event_types: projection.event_types(),
        aggregate: Some(first.aggregate.clone()),
        org_id: None,
    };
    let read = eventstore::read_batch(client, first.position, &filter, 100_000).await?;
    Ok(read
        .events
        .into_iter()
        .filter(|e| e.position <= upto && !dead.contains(&e.position))
        .collect())
}

/// Marks the projection's dead letters as seen: they no longer make it degraded.
pub async fn acknowledge_failed(
    pool: &Pool,
    projection: &str,
    clock: &dyn Clock,
) -> Result<u64, ProjectionError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE projections.failed_events SET acknowledged_at = $2 \
              WHERE projection = $1 AND dead_lettered_at IS NOT NULL AND acknowledged_at IS NULL",
            &[&projection, &clock.now()],
        )
        .await?)
}

/// Registers a projection's row (first start) and its current event types and tables.
pub(crate) async fn register<C: GenericClient>(
    client: &C,
    projection: &Arc<dyn Projection>,
) -> Result<(), ProjectionError> {
    client
        .execute(
            "INSERT INTO projections.projection_states (name, event_types, read_model_tables) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET event_types = EXCLUDED.event_types, \
                                              read_model_tables = EXCLUDED.read_model_tables",
            &[
                &projection.name(),
                &projection.event_types(),
                &projection.tables(),
            ],
        )
        .await?;
    Ok(())
}
