//! Blue/green rebuilds (projections.rebuilds): the builder fills a copy of a projection's
//! read model in `projections_rebuild` from the start of the log, in catch-up batches, while
//! the live model goes on serving and following writes; once the copy has caught up it takes
//! the projection's lock, applies what the live model got meanwhile, and swaps the copy in
//! (projections.swap_rebuild) in one transaction. Progress is in the table, so a restarted
//! service resumes, and a lock per rebuild lets only one process build at a time.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use futures::StreamExt;

use super::context::{read_ahead, release, Inner, Progress};
use super::failures::isolate;
use super::tx::Tx;
use super::{FailureClass, Projection, ProjectionError};
use crate::backoff::Backoff;
use crate::eventstore::{self, EventFilter, Position};

/// Index builds of one rebuild that run at once (each is a core's work).
const PARALLEL_INDEX_BUILDS: usize = 2;

/// Woken when a rebuild is asked for.
pub(crate) const CHANNEL: &str = "projection_rebuild";

/// The builder's session: the copy's schema first; it commits synchronously, as every batch
/// that applies events does (see `LIVE_SESSION_SQL`). One builder per rebuild across
/// processes.
const LOCK_SQL: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended('portcullis.rebuild/' || $1, 0)), \
     set_config('search_path', 'projections_rebuild, public', true)";

/// Asks for a rebuild (projections.request_rebuild); a running service builds it.
pub async fn request_rebuild(pool: &Pool, name: &str) -> Result<(), ProjectionError> {
    let client = pool.get().await?;
    client
        .execute("SELECT projections.request_rebuild($1)", &[&name])
        .await?;
    Ok(())
}

/// How a model at position zero is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FromZero {
    /// In place, by its runner.
    InPlace,
    /// By a rebuild already under way: its runner leaves the model alone (an empty model has
    /// nothing to keep up).
    Rebuilding,
    /// By a rebuild asked for just now, in the runner's transaction (under way once it
    /// commits).
    Requested,
}

/// How the projection, whose model is at position zero, is filled. A rebuild is asked for
/// when the log holds at least `RunnerOptions::rebuild_from_zero_at` events of its types: a
/// copy filled without its secondary indexes, built in bulk at the end, fills faster than
/// the live tables, where every row updates every index (users from zero: about 90% of a
/// bare INSERT's rate against 60%, see `make bench ARGS=catchup`).
pub(super) async fn fills_from_zero(
    inner: &Inner,
    tx: &Transaction<'_>,
    p: &dyn Projection,
) -> Result<FromZero, ProjectionError> {
    let name = p.name();
    let pending = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM projections.rebuilds WHERE projection = $1)")
        .await?;
    if tx.query_one(&pending, &[&name]).await?.get::<_, bool>(0) {
        return Ok(FromZero::Rebuilding);
    }
    let Some(at) = inner.opts.rebuild_from_zero_at else {
        return Ok(FromZero::InPlace);
    };
    if p.tables().is_empty() {
        return Ok(FromZero::InPlace);
    }
    let count = match p.event_types() {
        Some(types) => {
            let stmt = "SELECT count(*) FROM (SELECT 1 FROM eventstore.events \
                         WHERE event_type = ANY($1) LIMIT $2) e";
            tx.query_one(stmt, &[&types, &at]).await?
        }
        None => {
            let stmt = "SELECT count(*) FROM (SELECT 1 FROM eventstore.events LIMIT $1) e";
            tx.query_one(stmt, &[&at]).await?
        }
    };
    if count.get::<_, i64>(0) < at {
        return Ok(FromZero::InPlace);
    }
    tx.execute("SELECT projections.request_rebuild($1)", &[&name])
        .await?;
    tracing::info!(
        projection = name,
        "the read model fills from the start of a long log: by a rebuild"
    );
    Ok(FromZero::Requested)
}

pub(super) async fn run(inner: Arc<Inner>) {
    let mut wake = inner.rebuilds.subscribe();
    let mut errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let mut wake_in = inner.opts.fallback_tick;
        match pending(&inner).await {
            Ok(indexes) => {
                for i in indexes {
                    match build(&inner, i).await {
                        Ok(Some(retry)) => wake_in = wake_in.min(retry),
                        Ok(None) => errors.reset(),
                        Err(e) => {
                            let name = inner.projections[i].0.name();
                            tracing::warn!(projection = name, error = %crate::error_chain(&e), "rebuild batch failed; retrying");
                            wake_in = errors.next_delay();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "could not read projections.rebuilds");
                wake_in = errors.next_delay();
            }
        }
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // A backoff or the fallback tick; never a wait for state that has a signal.
            _ = tokio::time::sleep(wake_in) => {}
        }
    }
}

/// The projections of this process with a rebuild under way.
async fn pending(inner: &Inner) -> Result<Vec<usize>, ProjectionError> {
    let client = inner.pool.get().await?;
    let rows = client
        .query("SELECT projection FROM projections.rebuilds", &[])
        .await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Ok((0..inner.projections.len())
        .filter(|&i| names.iter().any(|n| n == inner.projections[i].0.name()))
        .collect())
}

/// Builds until the copy is swapped in (`None`), another process builds it, or a failing
/// event waits for its backoff (`Some(delay)`).
async fn build(inner: &Inner, index: usize) -> Result<Option<Duration>, ProjectionError> {
    let p = &*inner.projections[index].0;
    // The next batch, read while this one is applied (as a runner catching up does).
    let mut prefetched = None;
    loop {
        match batch(inner, p, &mut prefetched).await? {
            Step::More => continue,
            Step::Busy => return Ok(Some(Duration::from_secs(1))),
            Step::Wait(d) => return Ok(Some(d)),
            Step::Gone => return Ok(None),
            Step::CaughtUp => {
                if build_indexes(inner, p).await? {
                    continue; // writes went on meanwhile: catch up again, then swap
                }
                if swap(inner, p).await? {
                    inner.hub.applied(p.name());
                    // Its runner may have left the filling to us (a model at zero).
                    inner.projections[index].1.notify_one();
                    return Ok(None);
                }
            }
        }
    }
}

enum Step {
    More,
    CaughtUp,
    Busy,
    Wait(Duration),
    /// No rebuild of it any more (swapped in by another process, or cancelled).
    Gone,
}

/// One catch-up batch into the copy, and the copy's position moved with it. A full batch
/// has the next one read on another connection while it is applied; it is used only where
/// the next batch starts.
async fn batch(
    inner: &Inner,
    p: &dyn Projection,
    prefetched: &mut Option<(Position, eventstore::Batch)>,
) -> Result<Step, ProjectionError> {
    let name = p.name();
    let mut client = inner.pool.get().await?;
    let mut tx = client.transaction().await?;
    let lock = tx.prepare_cached(LOCK_SQL).await?;
    if !tx.query_one(&lock, &[&name]).await?.get::<_, bool>(0) {
        return Ok(Step::Busy);
    }
    let Some(from) = copy_position(&tx, name).await? else {
        return Ok(Step::Gone);
    };
    let limit = inner.opts.catchup_batch;
    let filter = EventFilter {
        event_types: p.event_types(),
        ..Default::default()
    };
    let read = match prefetched.take() {
        Some((at, batch)) if at == from => batch,
        _ => eventstore::read_batch(&tx, from, &filter, limit).await?,
    };
    let full = read.events.len() as i64 >= limit;
    let todo: Vec<_> = read.events.iter().collect();
    let mut progress = Progress {
        position: from,
        applied: 0,
        last: None,
        stopped: None,
    };
    let next_from = full.then(|| read.read_up_to(from, limit));
    let on = Tx::from(&tx);
    let (applied, next) = futures::join!(
        p.apply(&on, &todo),
        read_ahead(inner, next_from, &filter, limit)
    );
    *prefetched = next;
    if let Err(e) = applied {
        if matches!(
            e.class(),
            FailureClass::Connection | FailureClass::Transient
        ) {
            return Err(reduce_error(name, e));
        }
        // Aborted: start over and isolate the failing event (recorded as the live one is).
        drop(tx);
        tx = client.transaction().await?;
        tx.query_one(LOCK_SQL, &[&name]).await?;
        isolate(&mut tx, inner, p, &todo, &Default::default(), &mut progress).await?;
    } else {
        progress.applied_all(&todo);
    }
    if let Some(d) = progress.stopped {
        save(&tx, name, progress.position, progress.applied).await?;
        tx.commit().await?;
        return Ok(Step::Wait(d));
    }
    let upto = progress.position.max(read.read_up_to(from, limit));
    save(&tx, name, upto, progress.applied).await?;
    tx.commit().await?;
    release(read);
    Ok(if full { Step::More } else { Step::CaughtUp })
}

/// Builds the secondary indexes the copy was filled without, in bulk (much cheaper than
/// keeping them up row by row), several at once on connections of their own: a bulk build
/// keeps one core busy. False when there were none left to build.
async fn build_indexes(inner: &Inner, p: &dyn Projection) -> Result<bool, ProjectionError> {
    let name = p.name();
    let deferred: Vec<String> = {
        let client = inner.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT deferred_indexes FROM projections.rebuilds WHERE projection = $1",
            )
            .await?;
        match client.query_opt(&stmt, &[&name]).await? {
            Some(row) => row.get(0),
            None => return Ok(false),
        }
    };
    if deferred.is_empty() {
        return Ok(false);
    }
    let built = futures::stream::iter(deferred)
        .map(|stmt| async move {
            let client = inner.pool.get().await?;
            client
                .execute(
                    "SELECT projections.build_rebuild_index($1, $2)",
                    &[&name, &stmt],
                )
                .await?;
            Ok::<_, ProjectionError>(())
        })
        .buffer_unordered(PARALLEL_INDEX_BUILDS)
        .collect::<Vec<_>>()
        .await;
    built.into_iter().collect::<Result<(), _>>()?;
    Ok(true)
}

/// Swaps the caught-up copy in, holding the projection's lock: the live model stands still
/// while the copy takes what it got meanwhile. False when the copy fell behind again (a
/// burst of writes) and needs more batches first.
async fn swap(inner: &Inner, p: &dyn Projection) -> Result<bool, ProjectionError> {
    let name = p.name();
    let mut client = inner.pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(super::context::LOCK_SQL, &[&name]).await?;
    if !tx.query_one(LOCK_SQL, &[&name]).await?.get::<_, bool>(0) {
        return Ok(false);
    }
    let live = super::state::state(&tx, name)
        .await?
        .map(|s| s.position)
        .unwrap_or_default();
    let Some(mut at) = copy_position(&tx, name).await? else {
        return Ok(true);
    };
    let indexed: bool = tx
        .query_one(
            "SELECT deferred_indexes = '{}' FROM projections.rebuilds WHERE projection = $1",
            &[&name],
        )
        .await?
        .get(0);
    if !indexed {
        return Ok(false); // never without its indexes
    }
    if at < live {
        let filter = EventFilter {
            event_types: p.event_types(),
            ..Default::default()
        };
        let limit = inner.opts.live_batch;
        let read = eventstore::read_batch(&tx, at, &filter, limit).await?;
        let todo: Vec<_> = read.events.iter().filter(|e| e.position <= live).collect();
        if todo.len() as i64 >= limit {
            return Ok(false); // too much to take under the lock: catch up first
        }
        p.apply(&Tx::from(&tx), &todo)
            .await
            .map_err(|e| reduce_error(name, e))?;
        save(&tx, name, live, todo.len() as i64).await?;
        at = live;
    }
    tx.execute("SELECT projections.swap_rebuild($1)", &[&name])
        .await?;
    tx.commit().await?;
    tracing::info!(projection = name, position = %at, "rebuilt read model swapped in");
    inner.hub.publish(name, at);
    Ok(true)
}

async fn copy_position(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<Position>, ProjectionError> {
    let stmt = tx
        .prepare_cached(
            "SELECT position_tx, position_seq FROM projections.rebuilds WHERE projection = $1",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&name])
        .await?
        .map(|r| Position::from_sql(r.get(0), r.get(1))))
}

async fn save(
    tx: &Transaction<'_>,
    name: &str,
    at: Position,
    applied: i64,
) -> Result<(), ProjectionError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE projections.rebuilds SET position_tx = $2, position_seq = $3, \
                    events_applied = events_applied + $4, updated_at = now() \
              WHERE projection = $1",
        )
        .await?;
    tx.execute(&stmt, &[&name, &at.tx_sql(), &at.seq, &applied])
        .await?;
    Ok(())
}

fn reduce_error(name: &str, source: super::ReduceError) -> ProjectionError {
    ProjectionError::Reduce {
        projection: name.into(),
        source,
    }
}
