//! A live round from events this process knows: its own creating pushes, whose INSERT
//! returned their positions and timestamps (`EventStore::pushed_after`). Such a round need not
//! read them back, so it skips the first trip: BEGIN, a check in the database
//! (`projections.known_round`, V27) of what that trip would have established, the writes, the
//! positions' UPDATE and the COMMIT, with the reads riding along behind it, go out together.
//! A lone create then waits for one round trip of the round instead of two.
//!
//! The check takes the projections' locks and raises unless they are all where this process
//! last saw them, no transaction that could add an event in between is open, and exactly the
//! known events lie in between; the COMMIT then rolls back everything the round sent, and the
//! round reads the log as usual. It is tried only where it is likely to pass: no other
//! process's hub was listening at the last round (their writes would be in between), none of
//! this process's appends is on its way (it may hold the horizon back), and every projection
//! sends its writes at once.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::super::context::Inner;
use super::super::ride::Deliver;
use super::super::tx::Begun;
use super::super::ProjectionError;
use super::commit::{apply, commit, publish, BehindCommit, Committed};
use super::trip::{end_early, live_now, of_types, union_of_types, Heard, Plan};
use crate::eventstore::{Position, StoredEvent};

const CHECK_SQL: &str = "SELECT projections.known_round($1, $2, $3, $4, $5, $6, $7, $8)";

/// How a round from known events went.
pub(super) enum Known {
    /// Not worth a try, or its check failed: the round reads the log.
    Read,
    /// Applied and committed, up to this position.
    Applied(Position),
}

/// The events a round from known events would apply, from where every live projection is.
struct Candidate {
    live: Vec<usize>,
    from: Position,
    events: Vec<StoredEvent>,
}

pub(super) async fn round(inner: &Inner, heard: &Heard) -> Result<Known, ProjectionError> {
    let Some(c) = candidate(inner, heard) else {
        return Ok(Known::Read);
    };
    let reached = c.events.last().map_or(c.from, |e| e.position);
    let Some(plans) = plans(inner, &c) else {
        return Ok(Known::Read);
    };
    let types = union_of_types(inner, &c.live);
    let expected = c.events.iter().filter(|e| of_types(&types, e)).count() as i64;
    let begun = Begun::new(inner.pool.get().await?);
    // Prepared first, so that it goes out ahead of the writes and the COMMIT.
    let check = begun.client().prepare_cached(CHECK_SQL).await?;
    let names: Vec<&str> = plans.iter().map(|p| p.name).collect();
    let args = Check {
        check: &check,
        names: &names,
        from: c.from,
        to: reached,
        types: &types,
        expected,
        hub: inner.hub.id(),
    };
    let counts = &inner.known_rounds;
    match send(inner, &begun, &plans, reached, &args).await {
        Ok((answers, quiet)) => {
            publish(inner, &plans, reached, answers);
            begun.release();
            inner.alone.store(quiet, Ordering::SeqCst);
            count(&counts.applied, "applied");
            Ok(Known::Applied(reached))
        }
        Err(unsent) => {
            match unsent {
                Unsent::Commit => end_early(begun),
                Unsent::Writes {
                    connection_ok: true,
                } => begun.release(),
                Unsent::Writes {
                    connection_ok: false,
                } => drop(begun), // closes it
            }
            count(&counts.declined, "declined");
            Ok(Known::Read)
        }
    }
}

/// Counts a round for `Projector::known_rounds` and for the metric.
fn count(counter: &AtomicU64, outcome: &str) {
    counter.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics()
        .known_rounds
        .with_label_values(&[outcome])
        .inc();
}

fn candidate(inner: &Inner, heard: &Heard) -> Option<Candidate> {
    if !inner.alone.load(Ordering::SeqCst) || inner.store.appends_in_flight() > 0 {
        return None;
    }
    let live = live_now(inner);
    let mut positions = live
        .iter()
        .map(|&i| inner.hub.current(inner.projections[i].0.name()));
    let from = positions.next()?;
    if from == Position::ZERO || positions.any(|p| p != from) {
        return None;
    }
    let events = inner.store.pushed_after(from)?;
    // A newer commit than the last known one is another writer's: it would be in between.
    if heard.newest() > events.last()?.position || events.len() as i64 >= inner.opts.live_batch {
        return None;
    }
    Some(Candidate { live, from, events })
}

/// Every live projection's plan, when each sends its writes at once.
fn plans<'a>(inner: &Inner, c: &'a Candidate) -> Option<Vec<Plan<'a>>> {
    let mut plans = Vec::with_capacity(c.live.len());
    for &i in &c.live {
        let projection = &inner.projections[i].0;
        let types = projection.event_types();
        let events: Vec<&StoredEvent> = c.events.iter().filter(|e| of_types(&types, e)).collect();
        if !events.is_empty() && !projection.sends_at_once(&events) {
            return None;
        }
        plans.push(Plan {
            index: i,
            name: projection.name(),
            from: c.from,
            resets: inner.hub.resets(projection.name()),
            events,
        });
    }
    plans.iter().any(|p| !p.events.is_empty()).then_some(plans)
}

/// The check's statement and its arguments.
struct Check<'a> {
    check: &'a Statement,
    names: &'a [&'a str],
    from: Position,
    to: Position,
    types: &'a Option<Vec<String>>,
    expected: i64,
    hub: uuid::Uuid,
}

/// Why a round from known events did not commit.
enum Unsent {
    /// Something failed before the COMMIT went out: the transaction is still open.
    Commit,
    /// The COMMIT went out behind a failed statement and rolled everything back; the
    /// connection is usable again unless the COMMIT itself failed.
    Writes { connection_ok: bool },
}

/// Sends BEGIN, the check, the writes, the positions and the COMMIT with the rides behind it;
/// returns what answers the rides, and whether the progress stays quiet, once all of it went
/// through.
async fn send(
    inner: &Inner,
    begun: &Begun,
    plans: &[Plan<'_>],
    reached: Position,
    a: &Check<'_>,
) -> Result<(Vec<Deliver>, bool), Unsent> {
    let client = begun.client();
    let readers = inner.riders.current();
    let behind = BehindCommit {
        inner,
        readers: &readers,
        reached,
        live: &None,
    };
    let (from_tx, to_tx) = (a.from.tx_sql(), a.to.tx_sql());
    let params: [&(dyn ToSql + Sync); 8] = [
        &a.names,
        &from_tx,
        &a.from.seq,
        &to_tx,
        &a.to.seq,
        a.types,
        &a.expected,
        &a.hub,
    ];
    let checked = async {
        let (began, checked) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_one(a.check, &params),
        );
        began.and(checked).map(|row| row.get::<_, bool>(0))
    };
    // In this order on the wire: BEGIN and the check, then the writes and the positions.
    let (checked, (results, moved, sent)) =
        futures::join!(checked, apply(inner, begun, plans, reached, &behind));
    if let Err(e) = &checked {
        tracing::debug!(error = %crate::error_chain(e), "a live round from known events reads the log instead");
    }
    let failed = checked.is_err() || moved.is_err() || results.iter().any(|(_, r)| r.is_err());
    let Committed {
        committed, answers, ..
    } = match (sent, failed) {
        (Some(sent), _) => sent,
        (None, true) => return Err(Unsent::Commit),
        (None, false) => commit(begun, &behind).await,
    };
    match (committed, checked) {
        (Ok(()), Ok(quiet)) if !failed => Ok((answers, quiet)),
        // A COMMIT behind a failed statement rolls back; the rides saw none of the writes.
        (committed, _) => Err(Unsent::Writes {
            connection_ok: committed.is_ok(),
        }),
    }
}
