//! The runner (docs/ARCHITECTURE.md §5): per projection, woken by the live round, a poke,
//! a listener reconnect or a slow tick; takes the projection's lock, reads a bounded batch
//! below the horizon, applies it (isolating failing events), moves the position in the same
//! transaction, publishes, and repeats while batches come back full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::context::{
    read_ahead, release, Inner, Progress, RemoteWake, RunnerOptions, TRY_LOCK_SQL,
};
use super::failures::{forget_failures, isolate, runnable, Failure};
use super::rebuild::{fills_from_zero, FromZero};
use super::state::{self, register, RetryReport};
use super::tx::Tx;
use super::wait::ProgressHub;
use super::{FailureClass, Projection, ProjectionError};
use crate::backoff::Backoff;
use crate::eventstore::{self, EventFilter, EventStore, Position, StoredEvent, EVENTS_CHANNEL};
use crate::listener::{self, ListenEvent};

/// Runs a set of projections until stopped or dropped.
pub struct Projector {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Projector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum Outcome {
    /// Another runner holds the projection.
    Busy,
    /// A reducer failed on the fast path: apply the batch again, event by event in savepoints.
    Careful,
    /// The model is at position zero and a rebuild fills it (see `rebuild::fills_from_zero`).
    Rebuilding,
    Done {
        position: Position,
        /// More may be waiting right away (a full batch, or the time budget ran out).
        more: bool,
        /// A failing event waits for its backoff.
        retry_in: Option<Duration>,
    },
}

impl Projector {
    /// Registers the projections and starts a runner for each, plus one LISTEN connection for
    /// wake-ups from other processes.
    pub async fn start(
        url: &str,
        pool: Pool,
        store: EventStore,
        hub: ProgressHub,
        projections: Vec<Arc<dyn Projection>>,
        opts: RunnerOptions,
    ) -> Result<Projector, ProjectionError> {
        {
            let client = pool.get().await?;
            for p in &projections {
                register(&client, p).await?;
                hub.expect(p.name());
            }
        }
        let inner = Arc::new(Inner {
            pool,
            store,
            hub,
            opts,
            catching_up: projections.iter().map(|_| AtomicBool::new(true)).collect(),
            projections: projections
                .into_iter()
                .map(|p| (p, Arc::new(Notify::new())))
                .collect(),
            commits: watch::channel(0).0,
            rebuilds: watch::channel(0).0,
            riders: Default::default(),
            alone: AtomicBool::new(false),
            known_rounds: Default::default(),
        });
        let (remote_tx, remote_rx) = watch::channel(RemoteWake::default());
        let mut listening = remote_rx.clone();
        let channels = vec![EVENTS_CHANNEL.into(), super::rebuild::CHANNEL.into()];
        let (mut events, listener_task) = listener::spawn(url.to_string(), channels, "projector");
        let mut tasks = vec![listener_task];
        let woken = inner.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    ListenEvent::Notification { channel, .. }
                        if channel == super::rebuild::CHANNEL =>
                    {
                        woken.rebuilds.send_modify(|n| *n += 1)
                    }
                    ListenEvent::Connected => {
                        woken.rebuilds.send_modify(|n| *n += 1);
                        remote_tx.send_modify(|w| w.connects += 1)
                    }
                    ListenEvent::Notification { payload, .. } => {
                        if let Ok(p) = payload.parse::<Position>() {
                            remote_tx.send_modify(|w| w.position = w.position.max(p));
                        }
                    }
                }
            }
        }));
        for i in 0..inner.projections.len() {
            tasks.push(tokio::spawn(run(inner.clone(), i, remote_rx.clone())));
        }
        tasks.push(tokio::spawn(super::live::run(inner.clone(), remote_rx)));
        tasks.push(tokio::spawn(super::rebuild::run(inner.clone())));
        // Like the hub: return once LISTEN is in place, so a write from another process right
        // after start is announced to this node (bounded: a slow database does not block start,
        // the runners catch up when the listener connects).
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            listening.wait_for(|w| w.connects > 0),
        )
        .await;
        Ok(Projector { inner, tasks })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.inner
            .projections
            .iter()
            .map(|(p, _)| p.name())
            .collect()
    }

    pub fn projection(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.inner
            .projections
            .iter()
            .find(|(p, _)| p.name() == name)
            .map(|(p, _)| p.clone())
    }

    /// Lets `reader`'s reads ride along the live rounds (see `ride`) for as long as it lives.
    pub fn ride_with(&self, reader: std::sync::Weak<dyn super::RoundRead>) {
        self.inner.riders.add(reader);
    }

    /// How many live rounds applied events this process knew without reading them, and how
    /// many tried and found they had to read the log (see `live::known`).
    pub fn known_rounds(&self) -> (u64, u64) {
        let k = &self.inner.known_rounds;
        (
            k.applied.load(Ordering::Relaxed),
            k.declined.load(Ordering::Relaxed),
        )
    }

    /// Runs the projection's runner now (after a reset, a retry, or a moved test clock).
    pub fn poke(&self, name: &str) {
        for (p, n) in &self.inner.projections {
            if p.name() == name {
                n.notify_one();
            }
        }
    }

    pub async fn reset(&self, name: &str) -> Result<(), ProjectionError> {
        let p = self
            .projection(name)
            .ok_or_else(|| ProjectionError::Unknown(name.into()))?;
        let reset = state::reset(&self.inner.pool, &*p);
        self.inner.hub.rewind(name, reset).await?;
        self.poke(name);
        Ok(())
    }

    /// Starts a blue/green rebuild of the projection (projections.request_rebuild): a copy
    /// of its read model built beside the live one and swapped in when caught up.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let p = self
            .projection(name)
            .ok_or_else(|| ProjectionError::Unknown(name.into()))?;
        super::rebuild::request_rebuild(&self.inner.pool, p.name()).await?;
        self.inner.rebuilds.send_modify(|n| *n += 1);
        Ok(())
    }

    pub async fn retry_failed(&self, name: &str) -> Result<RetryReport, ProjectionError> {
        let p = self
            .projection(name)
            .ok_or_else(|| ProjectionError::Unknown(name.into()))?;
        let report = state::retry_failed(&self.inner.pool, &*p, &*self.inner.opts.clock).await?;
        self.poke(name);
        Ok(report)
    }

    /// Stops every runner; a batch in flight is rolled back with its connection.
    pub fn stop(self) {
        drop(self)
    }
}

/// A projection's own runner: catches up, isolates failing events and waits out their
/// backoff. Following live writes is the live round's work ([`super::live`]): it pokes the
/// runner when a projection needs more than one shared batch.
async fn run(inner: Arc<Inner>, index: usize, mut remote: watch::Receiver<RemoteWake>) {
    let (projection, poke) = inner.projections[index].clone();
    let name = projection.name();
    let local = inner.store.subscribe();
    let mut catch_up = true;
    let mut horizon_wait = Duration::from_millis(1);
    let mut errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut busy = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut connects = remote.borrow().connects;
    let mut commits = inner.commits.subscribe();
    // While catching up, the next batch is read while this one is applied.
    let mut prefetched: Option<(Position, eventstore::Batch)> = None;
    loop {
        let mut wake_in = inner.opts.fallback_tick;
        let mut behind = false;
        inner.catching_up[index].store(catch_up, Ordering::SeqCst);
        let outcome = match batch(&inner, &*projection, catch_up, false, &mut prefetched).await {
            Ok(Outcome::Careful) => {
                batch(&inner, &*projection, catch_up, true, &mut prefetched).await
            }
            other => other,
        };
        match outcome {
            Ok(Outcome::Done {
                position,
                more,
                retry_in,
            }) => {
                errors.reset();
                busy.reset();
                if more {
                    catch_up = true;
                    continue;
                }
                catch_up = false;
                inner.catching_up[index].store(false, Ordering::SeqCst);
                let target = (*local.borrow()).max(remote.borrow().position);
                if let Some(d) = retry_in {
                    wake_in = d;
                } else if position < target {
                    // An open transaction holds the horizon below what we were told exists.
                    // Ours (a push or another runner's batch) wake us when they end; for one of
                    // another process, back off (idle_in_transaction_session_timeout bounds it).
                    behind = true;
                    wake_in = horizon_wait;
                    horizon_wait = (horizon_wait * 2).min(Duration::from_millis(100));
                } else {
                    horizon_wait = Duration::from_millis(1);
                }
            }
            // The builder pokes us after its swap (one in another process is polled for).
            Ok(Outcome::Busy | Outcome::Rebuilding) => wake_in = busy.next_delay(),
            Ok(Outcome::Careful) => unreachable!("the careful pass never asks for another"),
            Err(e) => {
                tracing::warn!(projection = name, error = %crate::error_chain(&e), "projection batch failed; retrying");
                wake_in = errors.next_delay();
            }
        }
        let deadline = Instant::now() + wake_in;
        if sleep_until_woken(
            &mut remote,
            &mut connects,
            &poke,
            &mut commits,
            behind,
            deadline,
        )
        .await
        {
            catch_up = true;
        }
    }
}

/// Sleeps until a poke, the deadline (a backoff or the fallback tick), a commit of this
/// process when `behind`, or a listener reconnect; true for a reconnect (wake-ups may have
/// been lost meanwhile: catch up). A newer position alone does not wake: the live round
/// follows those.
async fn sleep_until_woken(
    remote: &mut watch::Receiver<RemoteWake>,
    connects: &mut u64,
    poke: &Notify,
    commits: &mut watch::Receiver<u64>,
    behind: bool,
    deadline: Instant,
) -> bool {
    loop {
        tokio::select! {
            changed = remote.changed() => {
                if changed.is_err() {
                    // The listener is gone (shutting down): the timers still apply.
                    tokio::time::sleep_until(deadline).await;
                    return false;
                }
                let w = *remote.borrow_and_update();
                if w.connects != *connects {
                    *connects = w.connects;
                    return true;
                }
            }
            _ = poke.notified() => return false,
            changed = commits.changed(), if behind => {
                let _ = changed;
                return false;
            }
            // A backoff or the fallback tick; never a wait for state that has a signal.
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// One batch, in a span that says what it did.
async fn batch(
    inner: &Inner,
    p: &dyn Projection,
    catch_up: bool,
    careful: bool,
    prefetched: &mut Option<(Position, eventstore::Batch)>,
) -> Result<Outcome, ProjectionError> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "projection_batch",
        projection = p.name(),
        careful,
        from = tracing::field::Empty,
        to = tracing::field::Empty,
        events = tracing::field::Empty,
        ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let out = batch_in(inner, p, catch_up, careful, prefetched)
        .instrument(span.clone())
        .await;
    span.record("ms", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(Outcome::Done { .. }) = &out {
        span.in_scope(|| tracing::debug!("batch committed"));
    }
    out
}

/// One batch in one transaction. Events are read before the transaction takes an xid (the
/// lock takes none), so the runner never holds back its own horizon while reading. The fast
/// path applies the whole batch at once; after a failure the careful pass isolates the bad
/// events in savepoints and applies the rest. While catching up, the next batch is read on
/// another connection as this one is applied; it is used only if the next batch starts
/// where it was read from (a batch read earlier is one the runner could have read then).
async fn batch_in(
    inner: &Inner,
    p: &dyn Projection,
    catch_up: bool,
    careful: bool,
    prefetched: &mut Option<(Position, eventstore::Batch)>,
) -> Result<Outcome, ProjectionError> {
    let name = p.name();
    let resets = inner.hub.resets(name);
    let mut client = inner.pool.get().await?;
    let mut tx = client.transaction().await?;
    let Some((from, failures)) = lock_and_load(&tx, name).await? else {
        return Ok(Outcome::Busy);
    };
    if !careful && from == Position::ZERO {
        let fill = fills_from_zero(inner, &tx, p).await?;
        if fill != FromZero::InPlace {
            tx.commit().await?;
            if fill == FromZero::Requested {
                inner.rebuilds.send_modify(|n| *n += 1); // this process's builder starts now
            }
            return Ok(Outcome::Rebuilding);
        }
    }
    let limit = [inner.opts.live_batch, inner.opts.catchup_batch][usize::from(catch_up)];
    let filter = EventFilter {
        event_types: p.event_types(),
        ..Default::default()
    };
    let read = match prefetched.take() {
        Some((at, batch)) if at == from => batch,
        _ => eventstore::read_batch(&tx, from, &filter, limit).await?,
    };
    let next_from = (catch_up && !careful && read.events.len() as i64 >= limit)
        .then(|| read.read_up_to(from, limit));
    let prefetch = read_ahead(inner, next_from, &filter, limit);
    let (todo, mut progress) = runnable(&inner.opts, &read.events, &failures, from);
    if careful {
        isolate(&mut tx, inner, p, &todo, &failures, &mut progress).await?;
    } else if !todo.is_empty() {
        let on = Tx::from(&tx);
        let (applied, next) = futures::join!(p.apply(&on, &todo), prefetch);
        *prefetched = next;
        match applied {
            Ok(()) => progress.applied_all(&todo),
            Err(e) => match e.class() {
                FailureClass::Connection | FailureClass::Transient => {
                    return Err(ProjectionError::Reduce {
                        projection: name.into(),
                        source: e,
                    })
                }
                // The transaction is aborted: drop it (rollback) and find the bad event.
                FailureClass::Permanent | FailureClass::Unknown => return Ok(Outcome::Careful),
            },
        }
        forget_failures(&tx, name, &todo, &failures).await?;
    }
    let more = match progress.stopped {
        Some(_) => false,
        None => {
            // Read to the end: everything below the horizon of our types is done.
            progress.position = progress.position.max(read.read_up_to(from, limit));
            read.events.len() as i64 >= limit
        }
    };
    let position = progress.position;
    if position != from {
        save_position(&tx, name, &progress).await?;
    }
    tx.commit().await?;
    committed(inner, name, from, &progress, resets);
    let retry_in = progress.stopped;
    release(read);
    Ok(Outcome::Done {
        position,
        more,
        retry_in,
    })
}

/// What a committed batch tells: its span, the hub, and runners waiting on a commit.
fn committed(inner: &Inner, name: &str, from: Position, progress: &Progress<'_>, resets: u64) {
    let span = tracing::Span::current();
    span.record("from", tracing::field::display(from));
    span.record("to", tracing::field::display(progress.position));
    span.record("events", progress.applied);
    if progress.applied > 0 {
        inner.hub.applied(name);
    }
    inner.hub.publish_since(name, progress.position, resets);
    if progress.position != from {
        inner.commits.send_modify(|n| *n += 1);
    }
}

impl<'a> Progress<'a> {
    pub(super) fn applied_all(&mut self, events: &[&'a StoredEvent]) {
        if let Some(last) = events.last() {
            self.applied += events.len() as i64;
            self.position = self.position.max(last.position);
            self.last = Some(last);
        }
    }
}

/// Takes the projection's lock (without waiting) and reads its position and failing events.
/// `None` when another runner holds it.
async fn lock_and_load(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<(Position, HashMap<Position, Failure>)>, ProjectionError> {
    // A read model is derived data: a batch lost in a crash is applied again from the older
    // position (state and model move together), so its commit need not wait for the flush.
    // Prepared once per connection, and pipelined: a live batch is a handful of round trips.
    let (set_async, try_lock, load_state, load_failures) = futures::try_join!(
        tx.prepare_cached(super::LIVE_SESSION_SQL),
        tx.prepare_cached(TRY_LOCK_SQL),
        tx.prepare_cached(
            "SELECT position_tx, position_seq FROM projections.projection_states WHERE name = $1"
        ),
        tx.prepare_cached(
            "SELECT f.event_tx, f.event_seq, f.next_attempt_at, f.dead_lettered_at IS NOT NULL \
               FROM projections.failed_events f \
               JOIN projections.projection_states s ON s.name = f.projection \
              WHERE f.projection = $1 AND (f.event_tx, f.event_seq) > (s.position_tx, s.position_seq)"
        ),
    )?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
    let (async_commit, locked) = futures::join!(
        tx.execute(&set_async, &[]),
        tx.query_one(&try_lock, &params)
    );
    async_commit?;
    if !locked?.get::<_, bool>(0) {
        return Ok(None);
    }
    // After the lock: these read the state its last holder committed.
    let (state, failures) = futures::join!(
        tx.query_opt(&load_state, &params),
        tx.query(&load_failures, &params)
    );
    let from = state?
        .map(|r| Position::from_sql(r.get(0), r.get(1)))
        .unwrap_or_default();
    let failures = failures?
        .iter()
        .map(|r| {
            let failure = Failure {
                next_attempt_at: r.get(2),
                dead: r.get(3),
            };
            (Position::from_sql(r.get(0), r.get(1)), failure)
        })
        .collect();
    Ok(Some((from, failures)))
}

async fn save_position(
    tx: &Transaction<'_>,
    name: &str,
    progress: &Progress<'_>,
) -> Result<(), ProjectionError> {
    let update = tx
        .prepare_cached(
            "UPDATE projections.projection_states \
            SET position_tx = $2, position_seq = $3, updated_at = now(), \
                events_applied = events_applied + $4, \
                event_timestamp = coalesce($5, event_timestamp), \
                last_aggregate_type = coalesce($6, last_aggregate_type), \
                last_aggregate_id = coalesce($7, last_aggregate_id), \
                last_version = coalesce($8, last_version) \
          WHERE name = $1",
        )
        .await?;
    let last = progress.last;
    tx.execute(
        &update,
        &[
            &name,
            &progress.position.tx_sql(),
            &progress.position.seq,
            &progress.applied,
            &last.map(|e| e.created_at),
            &last.map(|e| e.aggregate.aggregate_type.clone()),
            &last.map(|e| e.aggregate.id),
            &last.map(|e| e.version as i64),
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let o = RunnerOptions {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..RunnerOptions::default()
        };
        let d: Vec<u64> = (1..=6).map(|n| o.retry_delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
    }
}
