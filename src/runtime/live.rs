//! The live round: following writes as they commit, for every projection this process runs
//! at once. One read of the log below the horizon serves them all; one transaction applies
//! what each needs and moves every position, so a projection whose event types a commit did
//! not write costs no statement of its own, and its position (in projections.health too)
//! still moves to the horizon. Anything out of the ordinary (a projection far behind, a
//! failing event, a reducer error, a lost race) goes back to the projection's own runner.
//! A round is three round trips, since every write waits for one: BEGIN with the read and
//! the locks; the projections' statements with the positions' UPDATE; COMMIT.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use tokio::sync::watch;
use uuid::Uuid;

use super::context::{Inner, RemoteWake};
use super::tx::Begun;
use super::{FailureClass, ProjectionError};
use crate::backoff::Backoff;
use crate::eventstore::{self, EventFilter, Position, StoredEvent};

pub(super) async fn run(inner: Arc<Inner>, mut remote: watch::Receiver<RemoteWake>) {
    let mut local = inner.store.subscribe();
    let mut commits = inner.commits.subscribe();
    let mut target = Position::ZERO;
    // Where the last round read up to: a commit announced below it was in that read.
    let mut read_up_to = Position::ZERO;
    let mut horizon_wait = Duration::from_millis(1);
    let mut errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let mut wake_in = inner.opts.fallback_tick;
        let mut behind = false;
        match round(&inner, target).await {
            Ok(reached) => {
                errors.reset();
                read_up_to = reached;
                if reached < target {
                    // An open transaction holds the horizon below what we were told exists:
                    // ours wake us when they end, another process's are waited out.
                    behind = true;
                    wake_in = horizon_wait;
                    horizon_wait = (horizon_wait * 2).min(Duration::from_millis(100));
                } else {
                    horizon_wait = Duration::from_millis(1);
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "live projection round failed; the runners take over");
                inner.poke_all();
                wake_in = errors.next_delay();
            }
        }
        let deadline = tokio::time::Instant::now() + wake_in;
        loop {
            tokio::select! {
                changed = local.changed() => {
                    if changed.is_ok() {
                        target = target.max(*local.borrow_and_update());
                        break;
                    }
                    // The store is gone (shutting down): the timers still apply, no spinning.
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                changed = remote.changed() => {
                    if changed.is_err() {
                        // The listener is gone (shutting down): likewise.
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    let announced = remote.borrow_and_update().position;
                    target = target.max(announced);
                    // Our own commits come back this way too: only news wakes a round.
                    if announced >= read_up_to {
                        break;
                    }
                }
                changed = commits.changed(), if behind => {
                    let _ = changed;
                    break;
                }
                // A backoff or the fallback tick; never a wait for state that has a signal.
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// What one projection takes from the round's read.
struct Plan<'a> {
    index: usize,
    name: &'static str,
    from: Position,
    resets: u64,
    events: Vec<&'a StoredEvent>,
}

/// One round; returns how far every live projection has got: the horizon it read to, or less
/// when one of them could not be moved now (its lock was taken), so the loop comes back.
/// `target` is the newest commit this process heard of.
async fn round(inner: &Inner, target: Position) -> Result<Position, ProjectionError> {
    let Some((live, from)) = live_from(inner) else {
        return Ok(Position::ZERO);
    };
    let name = |i: usize| inner.projections[i].0.name();
    let limit = inner.opts.live_batch;
    let filter = EventFilter {
        event_types: union_of_types(inner, &live),
        ..Default::default()
    };
    // One round trip: BEGIN, the log read and every live projection's lock and state go out
    // together. The read takes no transaction id (the lock neither), so it holds back no
    // horizon; a projection that has nothing to apply is left alone below.
    let begun = Begun::new(inner.pool.get().await?);
    let names: Vec<&str> = live.iter().map(|&i| name(i)).collect();
    let (started, read, states) = futures::join!(
        begun.client().batch_execute("BEGIN"),
        eventstore::read_batch(begun.client(), from, &filter, limit),
        lock_states(begun.client(), &names),
    );
    started?;
    let (read, states) = (read?, states?);
    if read.events.len() as i64 >= limit {
        // More than one live batch behind: each runner catches up on its own.
        inner.poke_all();
        end_early(begun);
        return Ok(from);
    }
    let reached = read.read_up_to(from, limit);
    let mut plans = Vec::new();
    let mut held_back = reached;
    for &i in &live {
        let Some(state) = states.iter().find(|s| s.name == name(i)) else {
            continue;
        };
        if state.position >= reached {
            continue;
        }
        if !state.locked {
            // A runner has it now; it may have read before the newest commit.
            held_back = held_back.min(state.position);
            continue;
        }
        // A model at zero (new or reset) is its runner's: over a long log it asks for a rebuild.
        if state.failing || state.position < from || state.position == Position::ZERO {
            inner.projections[i].1.notify_one(); // its runner knows what to do
            continue;
        }
        let types = inner.projections[i].0.event_types();
        let events = read
            .events
            .iter()
            .filter(|e| e.position > state.position)
            .filter(|e| types.as_ref().is_none_or(|t| t.contains(&e.event_type)))
            .collect();
        plans.push(Plan {
            index: i,
            name: name(i),
            from: state.position,
            resets: inner.hub.resets(name(i)),
            events,
        });
    }
    // Positions ride along with applied events: a round that would move nothing but
    // positions costs no transaction, unless one of them is behind a commit someone may wait
    // for (it missed the round that applied it).
    if plans
        .iter()
        .all(|p| p.events.is_empty() && p.from >= target)
    {
        end_early(begun);
        return Ok(held_back);
    }
    Ok(apply_and_commit(inner, begun, &plans, reached)
        .await?
        .min(held_back))
}

/// The projections that follow the log live now, and where the round reads from: the lowest
/// of their positions, leaving out models at zero unless all are. Those are their runners'
/// to fill (see [`round`]); reading from zero for them would make every round a full batch on
/// a long log while one is rebuilt.
fn live_from(inner: &Inner) -> Option<(Vec<usize>, Position)> {
    let live: Vec<usize> = (0..inner.projections.len())
        .filter(|i| !inner.catching_up[*i].load(Ordering::SeqCst))
        .collect();
    let positions: Vec<Position> = live
        .iter()
        .map(|&i| inner.hub.current(inner.projections[i].0.name()))
        .collect();
    let moved = positions
        .iter()
        .copied()
        .filter(|p| *p > Position::ZERO)
        .min();
    let from = moved.or_else(|| positions.iter().copied().min())?;
    Some((live, from))
}

/// Ends a round's transaction that wrote nothing, off the round's path: the connection goes
/// back to the pool once its ROLLBACK is through.
fn end_early(begun: Begun) {
    tokio::spawn(async move {
        if let Err(e) = begun.rollback().await {
            tracing::debug!(error = %crate::error_chain(&e), "ending an empty live round");
        }
    });
}

/// Applies every plan in the round's transaction, moves their positions and commits; on a
/// failure rolls back and hands the projections to their runners.
async fn apply_and_commit(
    inner: &Inner,
    begun: Begun,
    plans: &[Plan<'_>],
    reached: Position,
) -> Result<Position, ProjectionError> {
    // The projections are independent: their statements, and the positions' UPDATE, go out
    // pipelined on one connection.
    let shared = &begun.tx();
    let applying = plans.iter().filter(|p| !p.events.is_empty()).map(|plan| {
        let projection = &inner.projections[plan.index].0;
        async move { (plan, projection.apply(shared, &plan.events).await) }
    });
    let (results, moved) = futures::join!(
        futures::future::join_all(applying),
        save_positions(begun.client(), plans, reached)
    );
    if let Some((plan, Err(e))) = results.into_iter().find(|(_, r)| r.is_err()) {
        end_early(begun);
        for p in plans {
            inner.projections[p.index].1.notify_one();
        }
        return match e.class() {
            FailureClass::Connection => Err(ProjectionError::Reduce {
                projection: plan.name.into(),
                source: e,
            }),
            _ => Ok(plans.iter().map(|p| p.from).min().unwrap_or_default()),
        };
    }
    if moved? != plans.len() as u64 {
        // A state row moved under us (read before its lock was ours): nothing of this round
        // may stand.
        end_early(begun);
        for p in plans {
            inner.projections[p.index].1.notify_one();
        }
        return Ok(plans.iter().map(|p| p.from).min().unwrap_or_default());
    }
    begun.commit().await?;
    for plan in plans {
        if !plan.events.is_empty() {
            inner.hub.applied(plan.name);
        }
        inner.hub.publish_since(plan.name, reached, plan.resets);
    }
    inner.commits.send_modify(|n| *n += 1);
    Ok(reached)
}

fn union_of_types(inner: &Inner, live: &[usize]) -> Option<Vec<String>> {
    let mut all = Vec::new();
    for &i in live {
        all.extend(inner.projections[i].0.event_types()?);
    }
    all.sort();
    all.dedup();
    Some(all)
}

struct LockedState {
    name: String,
    locked: bool,
    position: Position,
    failing: bool,
}

/// Tries each projection's lock and reads its state and whether events ahead of it are
/// failing, in one statement; the batch's commit is made asynchronous on the way (a read
/// model is derived data: a lost batch is applied again). The state may be read just before
/// its lock was ours; [`save_positions`] moves only rows still where they were read.
async fn lock_states(tx: &Client, names: &[&str]) -> Result<Vec<LockedState>, ProjectionError> {
    let stmt = tx
        .prepare_cached(
            "SELECT s.name, \
                    pg_try_advisory_xact_lock(hashtextextended('portcullis.projection/' || s.name, 0)), \
                    s.position_tx, s.position_seq, \
                    EXISTS (SELECT 1 FROM projections.failed_events f WHERE f.projection = s.name \
                              AND (f.event_tx, f.event_seq) > (s.position_tx, s.position_seq)), \
                    set_config('synchronous_commit', 'off', true) IS NOT NULL, \
                    set_config('search_path', 'projections, public', true) IS NOT NULL \
               FROM projections.projection_states s WHERE s.name = ANY($1) ORDER BY s.name",
        )
        .await?;
    let rows = tx.query(&stmt, &[&names]).await?;
    Ok(rows
        .iter()
        .map(|r| LockedState {
            name: r.get(0),
            locked: r.get(1),
            position: Position::from_sql(r.get(2), r.get(3)),
            failing: r.get(4),
        })
        .collect())
}

/// Moves every planned projection to `reached`, each only if its row is still at the
/// position the plan started from; returns how many moved.
fn last<'a>(p: &Plan<'a>) -> Option<&'a StoredEvent> {
    p.events.last().copied()
}

async fn save_positions(
    tx: &Client,
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
            "UPDATE projections.projection_states s \
                SET position_tx = $2, position_seq = $3, updated_at = now(), \
                    events_applied = s.events_applied + v.applied, \
                    event_timestamp = coalesce(v.at, s.event_timestamp), \
                    last_aggregate_type = coalesce(v.atype, s.last_aggregate_type), \
                    last_aggregate_id = coalesce(v.aid, s.last_aggregate_id), \
                    last_version = coalesce(v.version, s.last_version) \
               FROM unnest($1::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
                           $7::timestamptz[], $8::text[], $9::uuid[], $10::bigint[]) \
                    AS v(name, from_tx, from_seq, applied, at, atype, aid, version) \
              WHERE s.name = v.name AND s.position_tx = v.from_tx AND s.position_seq = v.from_seq",
        )
        .await?;
    Ok(tx
        .execute(
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
            ],
        )
        .await?)
}
