//! A live round's first trip and what it brings: the log read, each projection's lock and
//! state, and the plans made from them.

use std::sync::atomic::Ordering;

use deadpool_postgres::Client;
use tokio::sync::watch;
use uuid::Uuid;

use super::super::context::{Inner, RemoteWake};
use super::super::tx::Begun;
use super::super::ProjectionError;
use crate::eventstore::{self, EventFilter, Position, StoredEvent};

/// What one projection takes from the round's read.
pub(super) struct Plan<'a> {
    pub(super) index: usize,
    pub(super) name: &'static str,
    pub(super) from: Position,
    pub(super) resets: u64,
    pub(super) events: Vec<&'a StoredEvent>,
}

/// The newest commit this process heard of, here or from another process. A round that
/// commits while a newer one exists begins the next round on its connection, pipelined
/// behind its COMMIT: under a steady stream of writes a round then takes two round trips
/// of its own, not three.
pub(super) struct Heard {
    pub(super) local: watch::Receiver<Position>,
    pub(super) remote: watch::Receiver<RemoteWake>,
}

impl Heard {
    pub(super) fn newest(&self) -> Position {
        (*self.local.borrow()).max(self.remote.borrow().position)
    }
}

/// A round's first trip, done: its transaction, the log read from `from`, and every live
/// projection's lock and state.
pub(super) struct Opened {
    pub(super) begun: Begun,
    pub(super) live: Vec<usize>,
    pub(super) from: Position,
    pub(super) read: eventstore::Batch,
    pub(super) states: Vec<LockedState>,
}

/// Begins a round on a pooled connection: one round trip.
pub(super) async fn open(inner: &Inner) -> Result<Option<Opened>, ProjectionError> {
    let Some((live, from)) = live_from(inner) else {
        return Ok(None);
    };
    let begun = Begun::new(inner.pool.get().await?);
    let (read, states) = first_trip(inner, begun.client(), &live, from).await?;
    Ok(Some(Opened {
        begun,
        live,
        from,
        read,
        states,
    }))
}

/// BEGIN, the log read and every live projection's lock and state, sent together. The read
/// takes no transaction id (the lock neither), so it holds back no horizon; a projection
/// that has nothing to apply is left alone.
pub(super) async fn first_trip(
    inner: &Inner,
    client: &Client,
    live: &[usize],
    from: Position,
) -> Result<(eventstore::Batch, Vec<LockedState>), ProjectionError> {
    let filter = EventFilter {
        event_types: union_of_types(inner, live),
        ..Default::default()
    };
    let names: Vec<&str> = live
        .iter()
        .map(|&i| inner.projections[i].0.name())
        .collect();
    let (started, read, states) = futures::join!(
        client.batch_execute("BEGIN"),
        eventstore::read_batch(client, from, &filter, inner.opts.live_batch),
        lock_states(client, &names, inner.hub.id()),
    );
    started?;
    let states = states?;
    if let Some(s) = states.first() {
        inner.alone.store(s.quiet, Ordering::SeqCst);
    }
    Ok((read?, states))
}

/// The projections that follow the log live now, and where the round reads from: the lowest
/// of their positions, leaving out models at zero unless all are. Those are their runners'
/// to fill (see `round`); reading from zero for them would make every round a full batch on
/// a long log while one is rebuilt.
pub(super) fn live_from(inner: &Inner) -> Option<(Vec<usize>, Position)> {
    let live = live_now(inner);
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

/// The projections that follow the log live now: those whose runner is not catching up.
pub(super) fn live_now(inner: &Inner) -> Vec<usize> {
    (0..inner.projections.len())
        .filter(|i| !inner.catching_up[*i].load(Ordering::SeqCst))
        .collect()
}

/// Ends a round's transaction that wrote nothing, off the round's path: the connection goes
/// back to the pool once its ROLLBACK is through.
pub(super) fn end_early(begun: Begun) {
    tokio::spawn(async move {
        if let Err(e) = begun.rollback().await {
            tracing::debug!(error = %crate::error_chain(&e), "ending an empty live round");
        }
    });
}

/// Whether `event` is of `types` (`None`: every type), as `Projection::event_types` says.
pub(super) fn of_types(types: &Option<Vec<String>>, event: &StoredEvent) -> bool {
    types.as_ref().is_none_or(|t| t.contains(&event.event_type))
}

pub(super) fn union_of_types(inner: &Inner, live: &[usize]) -> Option<Vec<String>> {
    let mut all = Vec::new();
    for &i in live {
        all.extend(inner.projections[i].0.event_types()?);
    }
    all.sort();
    all.dedup();
    Some(all)
}

pub(super) struct LockedState {
    pub(super) name: String,
    pub(super) locked: bool,
    pub(super) position: Position,
    pub(super) failing: bool,
    /// No other process's hub listens (projections.quiet_progress; the same in every row).
    pub(super) quiet: bool,
}

/// Tries each projection's lock and reads its state and whether events ahead of it are
/// failing, in one statement; its position updates are made quiet on the way while no other
/// process's hub listens (`hub` is this process's; V26). The state may be
/// read just before its lock was ours; `commit::save_positions` moves only rows still where
/// they were read.
pub(super) async fn lock_states(
    tx: &Client,
    names: &[&str],
    hub: Uuid,
) -> Result<Vec<LockedState>, ProjectionError> {
    let stmt = tx
        .prepare_cached(
            "SELECT s.name, \
                    pg_try_advisory_xact_lock(hashtextextended('portcullis.projection/' || s.name, 0)), \
                    s.position_tx, s.position_seq, \
                    EXISTS (SELECT 1 FROM projections.failed_events f WHERE f.projection = s.name \
                              AND (f.event_tx, f.event_seq) > (s.position_tx, s.position_seq)), \
                    set_config('search_path', 'projections, public', true) IS NOT NULL, \
                    (SELECT projections.quiet_progress($2)) \
               FROM projections.projection_states s WHERE s.name = ANY($1) ORDER BY s.name",
        )
        .await?;
    let rows = tx.query(&stmt, &[&names, &hub]).await?;
    Ok(rows
        .iter()
        .map(|r| LockedState {
            name: r.get(0),
            locked: r.get(1),
            position: Position::from_sql(r.get(2), r.get(3)),
            failing: r.get(4),
            quiet: r.get(6),
        })
        .collect())
}
