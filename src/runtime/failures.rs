//! Failing events: which events of a batch run now (dead letters passed over, backoffs
//! waited out), the careful pass that isolates a failing event in savepoints, and the
//! failure records in projections.failed_events.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::context::{Inner, Progress, RunnerOptions};
use super::tx::Tx;
use super::{FailureClass, Projection, ProjectionError};
use crate::eventstore::{Position, StoredEvent};

pub(super) struct Failure {
    pub(super) next_attempt_at: Option<DateTime<Utc>>,
    pub(super) dead: bool,
}

/// The events of the batch to apply now: dead letters are passed over, and the batch ends
/// before a failing event whose backoff has not run out.
pub(super) fn runnable<'a>(
    opts: &RunnerOptions,
    events: &'a [StoredEvent],
    failures: &HashMap<Position, Failure>,
    from: Position,
) -> (Vec<&'a StoredEvent>, Progress<'a>) {
    let mut progress = Progress {
        position: from,
        applied: 0,
        last: None,
        stopped: None,
    };
    let mut todo = Vec::with_capacity(events.len());
    for ev in events {
        if let Some(f) = failures.get(&ev.position) {
            if f.dead {
                if todo.is_empty() {
                    progress.position = ev.position;
                }
                continue;
            }
            let now = opts.clock.now();
            if let Some(at) = f.next_attempt_at.filter(|at| *at > now) {
                progress.stopped = Some((at - now).to_std().unwrap_or_default());
                break;
            }
        }
        todo.push(ev);
    }
    (todo, progress)
}

/// The careful pass: applies the events in order, in savepoints, halving a part that fails
/// until the failing event stands alone. A permanent failure is dead-lettered and passed
/// over; another is recorded and ends the batch until its backoff has run out.
pub(super) async fn isolate<'a>(
    tx: &mut Transaction<'_>,
    inner: &Inner,
    p: &dyn Projection,
    todo: &[&'a StoredEvent],
    failures: &HashMap<Position, Failure>,
    progress: &mut Progress<'a>,
) -> Result<(), ProjectionError> {
    let name = p.name();
    let mut parts = std::collections::VecDeque::from([todo]);
    while let Some(part) = parts.pop_front() {
        let sp = tx.savepoint("apply").await?;
        let result = p.apply(&Tx::from(&sp), part).await;
        let e = match result {
            Ok(()) => {
                sp.commit().await?;
                forget_failures(tx, name, part, failures).await?;
                progress.applied_all(part);
                continue;
            }
            Err(e) => {
                sp.rollback().await?;
                e
            }
        };
        let class = e.class();
        if matches!(class, FailureClass::Connection | FailureClass::Transient) {
            return Err(ProjectionError::Reduce {
                projection: name.into(),
                source: e,
            });
        }
        if part.len() > 1 {
            let (left, right) = part.split_at(part.len() / 2);
            parts.push_front(right);
            parts.push_front(left);
            continue;
        }
        let ev = part[0];
        let error = crate::error_chain(&e);
        tracing::warn!(projection = name, position = %ev.position, event_type = %ev.event_type, error = %error, "reducer failed");
        let permanent = class == FailureClass::Permanent;
        let (dead, retry_in) = record_failure(tx, &inner.opts, name, ev, &error, permanent).await?;
        if !dead {
            progress.stopped = Some(retry_in);
            return Ok(());
        }
        tracing::error!(projection = name, position = %ev.position, "event dead-lettered; the projection is degraded");
        progress.position = progress.position.max(ev.position);
    }
    Ok(())
}

/// Forgets the recorded failures of events that have now applied.
pub(super) async fn forget_failures(
    tx: &Transaction<'_>,
    name: &str,
    applied: &[&StoredEvent],
    failures: &HashMap<Position, Failure>,
) -> Result<(), ProjectionError> {
    if failures.is_empty() {
        return Ok(());
    }
    let (txs, seqs): (Vec<i64>, Vec<i64>) = applied
        .iter()
        .filter(|e| failures.contains_key(&e.position))
        .map(|e| (e.position.tx_sql(), e.position.seq))
        .unzip();
    if txs.is_empty() {
        return Ok(());
    }
    tx.execute(
        "DELETE FROM projections.failed_events f USING unnest($2::bigint[], $3::bigint[]) AS a(tx, seq) \
          WHERE f.projection = $1 AND f.event_tx = a.tx AND f.event_seq = a.seq",
        &[&name, &txs, &seqs],
    )
    .await?;
    Ok(())
}

/// Records (or bumps) a failure in the batch's transaction; returns whether the event is now
/// dead-lettered (at once when `permanent`), and otherwise how long until the next attempt.
async fn record_failure(
    tx: &Transaction<'_>,
    opts: &RunnerOptions,
    name: &str,
    ev: &StoredEvent,
    error: &str,
    permanent: bool,
) -> Result<(bool, Duration), ProjectionError> {
    let now = opts.clock.now();
    let before: i32 = tx
        .query_opt(
            "SELECT failure_count FROM projections.failed_events \
              WHERE projection = $1 AND event_tx = $2 AND event_seq = $3",
            &[&name, &ev.position.tx_sql(), &ev.position.seq],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let failures = before + 1;
    let dead = permanent || failures >= opts.max_attempts;
    let delay = opts.retry_delay(failures);
    let next = (!dead).then(|| now + chrono::Duration::from_std(delay).unwrap_or_default());
    tx.execute(
        "INSERT INTO projections.failed_events AS f \
            (projection, event_tx, event_seq, aggregate_type, aggregate_id, aggregate_version, \
             event_type, error, failure_count, first_failed_at, last_failed_at, next_attempt_at, \
             dead_lettered_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, CASE WHEN $12::boolean THEN $10::timestamptz END) \
         ON CONFLICT (projection, event_tx, event_seq) DO UPDATE \
            SET error = EXCLUDED.error, failure_count = EXCLUDED.failure_count, \
                last_failed_at = EXCLUDED.last_failed_at, next_attempt_at = EXCLUDED.next_attempt_at, \
                dead_lettered_at = EXCLUDED.dead_lettered_at, acknowledged_at = NULL",
        &[
            &name,
            &ev.position.tx_sql(),
            &ev.position.seq,
            &ev.aggregate.aggregate_type,
            &ev.aggregate.id,
            &(ev.version as i64),
            &ev.event_type,
            &error,
            &failures,
            &now,
            &next,
            &dead,
        ],
    )
    .await?;
    Ok((dead, delay))
}
