//! A live round's second trip and its COMMIT: every plan's statements and the positions'
//! UPDATE, pipelined; then the COMMIT, with the reads riding along it and the next round's
//! first trip behind it. When every projection sends its statements at once, the COMMIT goes
//! in the same trip as they do. The writers are told once the COMMIT and the rides are back,
//! not after the next round's first trip: that one serves only the next round.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use chrono::{DateTime, Utc};
use futures::future::MaybeDone;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::super::context::Inner;
use super::super::ride;
use super::super::tx::{Begun, Tx};
use super::super::{FailureClass, ProjectionError, ReduceError};
use super::trip::{end_early, first_trip, live_now, Heard, LockedState, Opened, Plan};
use crate::eventstore::{self, Position, StoredEvent};

/// Applies every plan in the round's transaction, moves their positions and commits; on a
/// failure rolls back and hands the projections to their runners.
pub(super) async fn apply_and_commit(
    inner: &Inner,
    heard: &Heard,
    begun: Begun,
    plans: &[Plan<'_>],
    reached: Position,
) -> Result<(Position, Option<Opened>), ProjectionError> {
    let readers = inner.riders.current();
    let live = next_live(inner, heard, reached);
    let behind = BehindCommit {
        inner,
        readers: &readers,
        reached,
        live: &live,
    };
    let (results, moved, sent) = apply(inner, &begun, plans, reached, &behind).await;
    let commit_sent = sent.is_some();
    let failure = |begun: Begun| {
        // A COMMIT sent behind a failed statement rolled back already: dropped, the
        // connection is closed (the next round's BEGIN may have gone out behind it).
        if !commit_sent {
            end_early(begun);
        }
        for p in plans {
            inner.projections[p.index].1.notify_one();
        }
        plans.iter().map(|p| p.from).min().unwrap_or_default()
    };
    if let Some((plan, Err(e))) = results.into_iter().find(|(_, r)| r.is_err()) {
        drop(sent);
        let from = failure(begun);
        return match e.class() {
            FailureClass::Connection => Err(ProjectionError::Reduce {
                projection: plan.name.into(),
                source: e,
            }),
            _ => Ok((from, None)),
        };
    }
    if let Err(e) = moved {
        drop(sent);
        let from = failure(begun);
        // A state row moved under us (read before its lock was ours): nothing of this round
        // may stand (projections.expect_moved).
        return match moved_under_us(&e) {
            true => Ok((from, None)),
            false => Err(e),
        };
    }
    let Committed {
        committed,
        answers,
        mut next,
    } = commit_unless_sent(sent, &begun, &behind).await;
    committed?;
    // The writers hear of the round before the next one's first trip is back.
    publish(inner, plans, reached, answers);
    (&mut next).await;
    let trip = Pin::new(&mut next).take_output().flatten();
    drop(next);
    Ok((reached, next_round(begun, live, reached, trip)))
}

/// The COMMIT `apply` sent already, or sends it now.
async fn commit_unless_sent<'b>(
    sent: Option<Committed<'b>>,
    begun: &'b Begun,
    behind: &BehindCommit<'b>,
) -> Committed<'b> {
    match sent {
        Some(sent) => sent,
        None => commit(begun, behind).await,
    }
}

/// A round's COMMIT and the reads that rode along it, back; the next round's first trip,
/// behind them on the wire, may still be under way.
pub(super) struct Committed<'a> {
    pub(super) committed: Result<(), tokio_postgres::Error>,
    pub(super) answers: Vec<ride::Deliver>,
    pub(super) next: MaybeDone<NextTrip<'a>>,
}

/// The next round's first trip (`None` when no next round began behind the COMMIT).
pub(super) type NextTrip<'a> =
    Pin<Box<dyn Future<Output = Option<Result<FirstTrip, ProjectionError>>> + Send + 'a>>;
pub(super) type FirstTrip = (eventstore::Batch, Vec<LockedState>);

/// Sends every plan's statements and the positions' UPDATE, pipelined, and waits for their
/// answers. When every projection sends its statements at once (`Projection::sends_at_once`),
/// none waits for a Parse and none failed before sending, the COMMIT and what goes `behind`
/// it follow them in the same round trip: returned as `Some`, and the transaction is over
/// (rolled back if any statement failed).
pub(super) async fn apply<'p, 'b>(
    inner: &Inner,
    begun: &'b Begun,
    plans: &'p [Plan<'p>],
    reached: Position,
    behind: &BehindCommit<'b>,
) -> (
    Vec<(&'p Plan<'p>, Result<(), ReduceError>)>,
    Result<u64, ProjectionError>,
    Option<Committed<'b>>,
) {
    let at_once = plans
        .iter()
        .all(|p| p.events.is_empty() || inner.projections[p.index].0.sends_at_once(&p.events));
    let failed_early = AtomicBool::new(false);
    // The projections are independent: their statements, and the positions' UPDATE, go out
    // pipelined on one connection.
    let shared = &begun.tx();
    let applying = plans.iter().filter(|p| !p.events.is_empty()).map(|plan| {
        let projection = &inner.projections[plan.index].0;
        let failed_early = &failed_early;
        async move {
            let result = projection.apply(shared, &plan.events).await;
            if result.is_err() {
                failed_early.store(true, Ordering::SeqCst);
            }
            (plan, result)
        }
    });
    let work = futures::future::join(
        futures::future::join_all(applying),
        save_positions(shared, plans, reached),
    );
    let mut work = std::pin::pin!(work);
    if at_once {
        match futures::poll!(work.as_mut()) {
            Poll::Ready((results, moved)) => return (results, moved, None),
            Poll::Pending if !begun.preparing() && !failed_early.load(Ordering::SeqCst) => {
                let ((results, moved), sent) = futures::join!(work, commit(begun, behind));
                return (results, moved, Some(sent));
            }
            Poll::Pending => {}
        }
    }
    let (results, moved) = work.await;
    (results, moved, None)
}

/// The projections the next round follows, when it is to begin behind this round's COMMIT:
/// a newer commit was heard of (see [`Heard`]).
pub(super) fn next_live(inner: &Inner, heard: &Heard, reached: Position) -> Option<Vec<usize>> {
    Some(live_now(inner)).filter(|l| !l.is_empty() && heard.newest() > reached)
}

/// What goes out right behind a round's COMMIT: the reads riding along and, for `live`,
/// the next round's first trip from where this one reached.
pub(super) struct BehindCommit<'a> {
    pub(super) inner: &'a Inner,
    pub(super) readers: &'a [Arc<dyn ride::RoundRead>],
    pub(super) reached: Position,
    pub(super) live: &'a Option<Vec<usize>>,
}

/// Sends the COMMIT and, behind it in the same round trip, what `behind` holds; returns
/// once the COMMIT and the rides are back.
pub(super) async fn commit<'b>(begun: &'b Begun, behind: &BehindCommit<'b>) -> Committed<'b> {
    let client = begun.client();
    let &BehindCommit {
        inner,
        readers,
        reached,
        live,
    } = behind;
    let mut head = std::pin::pin!(futures::future::join(
        begun.commit_in_pipeline(),
        ride::read_all(readers, client, reached),
    ));
    let trip: NextTrip<'b> = Box::pin(async move {
        match live {
            Some(live) => Some(first_trip(inner, client, live, reached).await),
            None => None,
        }
    });
    let mut next = futures::future::maybe_done(trip);
    // The first polls put each on the wire, in this order: the COMMIT, the rides, then the
    // next round's first trip.
    let early = futures::poll!(head.as_mut());
    let _ = futures::poll!(&mut next);
    let (committed, answers) = match early {
        Poll::Ready(out) => out,
        Poll::Pending => head.await,
    };
    Committed {
        committed,
        answers,
        next,
    }
}

/// After the COMMIT: answers the reads that rode along, and publishes the positions.
pub(super) fn publish(
    inner: &Inner,
    plans: &[Plan<'_>],
    reached: Position,
    answers: Vec<ride::Deliver>,
) {
    // The hub first: a request answered by a ride finds its wait over too, and a read that
    // follows it in this process never finds the hub behind what it was given.
    for plan in plans {
        if !plan.events.is_empty() {
            inner.hub.applied(plan.name);
        }
        inner.hub.publish_since(plan.name, reached, plan.resets);
    }
    for answer in answers {
        answer();
    }
    inner.commits.send_modify(|n| *n += 1);
}

/// The next round, when its first trip went out behind the COMMIT and came back.
pub(super) fn next_round(
    begun: Begun,
    live: Option<Vec<usize>>,
    reached: Position,
    next: Option<Result<FirstTrip, ProjectionError>>,
) -> Option<Opened> {
    match (live, next) {
        (Some(live), Some(Ok((read, states)))) => Some(Opened {
            from: reached,
            begun,
            live,
            read,
            states,
        }),
        (_, Some(Err(e))) => {
            // Dropped mid-transaction, the connection is closed; the loop begins anew.
            tracing::debug!(error = %crate::error_chain(&e), "beginning the next live round");
            None
        }
        _ => {
            begun.release();
            None
        }
    }
}

/// Whether the positions' UPDATE failed because a state moved under the round.
pub(super) fn moved_under_us(e: &ProjectionError) -> bool {
    matches!(e, ProjectionError::Db(e) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
}

pub(super) fn last<'a>(p: &Plan<'a>) -> Option<&'a StoredEvent> {
    p.events.last().copied()
}

/// Moves every planned projection to `reached`, each only if its row is still at the
/// position the plan started from; fails (serialization_failure, aborting the transaction)
/// unless all of them moved.
pub(super) async fn save_positions(
    tx: &Tx<'_>,
    plans: &[Plan<'_>],
    reached: Position,
) -> Result<u64, ProjectionError> {
    let names: Vec<&str> = plans.iter().map(|p| p.name).collect();
    let from_tx: Vec<i64> = plans.iter().map(|p| p.from.tx_sql()).collect();
    let from_seq: Vec<i64> = plans.iter().map(|p| p.from.seq).collect();
    let applied: Vec<i64> = plans.iter().map(|p| p.events.len() as i64).collect();
    let at: Vec<Option<DateTime<Utc>>> = plans
        .iter()
        .map(|p| last(p).map(|e| e.created_at))
        .collect();
    let atype: Vec<Option<&str>> = plans
        .iter()
        .map(|p| last(p).map(|e| e.aggregate.aggregate_type.as_str()))
        .collect();
    let aid: Vec<Option<Uuid>> = plans
        .iter()
        .map(|p| last(p).map(|e| e.aggregate.id))
        .collect();
    let version: Vec<Option<i64>> = plans
        .iter()
        .map(|p| last(p).map(|e| e.version as i64))
        .collect();
    let stmt = tx
        .prepare_cached(
            "WITH moved AS (UPDATE projections.projection_states s \
                SET position_tx = $2, position_seq = $3, updated_at = now(), \
                    events_applied = s.events_applied + v.applied, \
                    event_timestamp = coalesce(v.at, s.event_timestamp), \
                    last_aggregate_type = coalesce(v.atype, s.last_aggregate_type), \
                    last_aggregate_id = coalesce(v.aid, s.last_aggregate_id), \
                    last_version = coalesce(v.version, s.last_version) \
               FROM unnest($1::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
                           $7::timestamptz[], $8::text[], $9::uuid[], $10::bigint[]) \
                    AS v(name, from_tx, from_seq, applied, at, atype, aid, version) \
              WHERE s.name = v.name AND s.position_tx = v.from_tx AND s.position_seq = v.from_seq \
             RETURNING 1) \
             SELECT projections.expect_moved(count(*), $11) FROM moved",
        )
        .await?;
    let expected = plans.len() as i64;
    let rows = tx
        .query(
            &stmt,
            &[
                &names,
                &reached.tx_sql(),
                &reached.seq,
                &from_tx,
                &from_seq,
                &applied,
                &at,
                &atype,
                &aid,
                &version,
                &expected,
            ],
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
}
