//! Appending: validation before the round trip, one statement that appends (see `encode`),
//! and the wake-up after commit.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use postgres_types::Type;
use tokio::sync::watch;

use super::encode::Encoded;
use super::error::StoreError;
use super::notify::Waker;
use super::position::Position;
use super::read::load_version;
use super::recent::Recent;
use super::types::{
    valid_aggregate_type, valid_event_type, Append, Pushed, StoreOptions, StoredEvent,
};

/// Appends events and wakes readers. Cheap to clone; clones share the wake-up machinery.
#[derive(Clone)]
pub struct EventStore {
    pool: Pool,
    opts: StoreOptions,
    waker: Arc<Waker>,
    recent: Arc<Recent>,
    /// Pushes commit without waiting for their WAL flush (see [`EventStore::deferring`]).
    deferred: bool,
}

impl EventStore {
    /// Must be called inside a tokio runtime: in coalesced mode it starts the task that sends
    /// the cross-process wake-ups.
    pub fn new(pool: Pool, opts: StoreOptions) -> Self {
        let waker = Arc::new(Waker::start(pool.clone(), opts.notify));
        EventStore {
            pool,
            opts,
            waker,
            recent: Arc::default(),
            deferred: false,
        }
    }

    /// This store, with pushes that commit without waiting for their WAL flush: for a writer
    /// that tells nobody of its write until a read model has applied it. Every commit that
    /// applies events is synchronous, and one that applied the write saw its commit, whose
    /// record therefore lies before its own in the WAL: its flush makes the write durable
    /// too. Concurrent writes so share the flush of the round that applies them instead of
    /// taking one each. A writer that answers before then calls
    /// [`EventStore::make_durable`] first.
    pub fn deferring(&self) -> EventStore {
        EventStore {
            deferred: true,
            ..self.clone()
        }
    }

    /// Waits until every commit made so far, this process's deferred pushes included, is
    /// flushed: a transaction with an id of its own commits synchronously, and its flush
    /// covers every WAL record before its commit.
    pub async fn make_durable(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let (began, took, committed) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_one("SELECT pg_current_xact_id()", &[]),
            client.batch_execute("COMMIT"),
        );
        began?;
        took?;
        committed?;
        Ok(())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// In-process wake-ups: the receiver sees the highest position this process committed.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.waker.subscribe()
    }

    /// Appends in a transaction of its own, commits, then wakes readers. The append is one
    /// statement, so it runs as its own transaction: one round trip, one statement.
    pub async fn push(&self, appends: &[Append]) -> Result<Pushed, StoreError> {
        let encoded = self.encode(appends)?;
        let rows = {
            let _sending = self.recent.sending();
            let client = self.pool.get().await?;
            let append = client.prepare_cached(encoded.sql(self.deferred)).await?;
            client.query(&append, &encoded.params()).await
        };
        let known = rows.as_ref().ok().and_then(|rows| encoded.known(rows));
        // The connection is back in the pool before decode, which may take one to read the
        // version after a conflict (holding two at once starves the pool under contention).
        let pushed = self.decode(rows).await?;
        self.recent.record(pushed.last(), known);
        self.wake(&pushed);
        Ok(pushed)
    }

    /// Runs `f` with the in-process wake-ups of its pushes held back until it calls
    /// [`EventStore::release_wakes`] (or ends, or is dropped): a writer that hands the live
    /// round something to carry for it (a read back) hands it over before the round starts.
    /// Other processes are woken as usual.
    pub async fn holding_wakes<F: std::future::Future>(&self, f: F) -> F::Output {
        super::notify::holding(self.waker.clone(), f).await
    }

    /// Wakes this process's readers for the pushes the current task made while
    /// [`EventStore::holding_wakes`]; outside of it, does nothing.
    pub fn release_wakes(&self) {
        self.waker.release();
    }

    /// Every event this process appended after `after`, in log order, when it knows all of
    /// them without reading the log (see `recent`); `None` otherwise. Another process's
    /// events in between are not known here: whoever uses these must check for them.
    pub fn pushed_after(&self, after: Position) -> Option<Vec<StoredEvent>> {
        self.recent.after(after)
    }

    /// How many of this process's appends are on their way now.
    pub fn appends_in_flight(&self) -> usize {
        self.recent.in_flight()
    }

    /// Appends inside the caller's transaction (for writes that must commit together with
    /// the events, such as an outbox row). After the commit, call [`EventStore::committed`].
    pub async fn push_in(
        &self,
        tx: &Transaction<'_>,
        appends: &[Append],
    ) -> Result<Pushed, StoreError> {
        let encoded = self.encode(appends)?;
        let append = tx.prepare_cached(encoded.sql(false)).await?;
        let rows = tx.query(&append, &encoded.params()).await;
        self.decode(rows).await
    }

    /// Validates and lays the appends out as the parameters of the statement that appends
    /// them.
    fn encode<'a>(&self, appends: &'a [Append]) -> Result<Encoded<'a>, StoreError> {
        self.validate(appends)?;
        Encoded::new(appends, &self.opts)
    }

    /// Turns eventstore.append's answer into positions, or into a typed error.
    async fn decode(
        &self,
        rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    ) -> Result<Pushed, StoreError> {
        let rows = match rows.map_err(StoreError::from_db) {
            Ok(rows) => rows,
            Err(StoreError::Conflict {
                aggregate,
                expected,
                ..
            }) => {
                // The transaction is aborted: read the aggregate's version on another connection.
                let client = self.pool.get().await?;
                let actual = load_version(&client, &aggregate).await?;
                return Err(StoreError::Conflict {
                    aggregate,
                    expected,
                    actual,
                });
            }
            Err(e) => return Err(e),
        };
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Invalid("append returned nothing".into()))?;
        // eventstore.append answers one row (tx, seqs[]); a creating INSERT a row (tx, seq) per
        // event.
        let positions: Vec<Position> = if row.columns()[1].type_() == &Type::INT8_ARRAY {
            let tx: i64 = row.get(0);
            let seqs: Vec<i64> = row.get(1);
            seqs.into_iter()
                .map(|seq| Position::from_sql(tx, seq))
                .collect()
        } else {
            let mut p: Vec<Position> = rows
                .iter()
                .map(|r| Position::from_sql(r.get(0), r.get(1)))
                .collect();
            p.sort();
            p
        };
        Ok(Pushed { positions })
    }

    /// After the commit of a [`EventStore::push_in`]: wakes this process's readers at once
    /// and, in coalesced mode, other processes soon after.
    pub fn committed(&self, pushed: &Pushed) {
        self.recent.record(pushed.last(), None);
        self.wake(pushed);
    }

    fn wake(&self, pushed: &Pushed) {
        crate::metrics::metrics()
            .events_appended
            .inc_by(pushed.positions.len() as u64);
        self.waker.wake(pushed.last());
    }

    /// Refuses bad input before a round trip, with errors that name the culprit. The SQL
    /// function and the table's CHECK constraints hold the same rules for other writers.
    fn validate(&self, appends: &[Append]) -> Result<(), StoreError> {
        if appends.is_empty() {
            return Err(StoreError::Invalid("nothing to append".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for a in appends {
            let agg = &a.aggregate;
            if !valid_aggregate_type(&agg.aggregate_type) {
                return Err(StoreError::Invalid(format!(
                    "invalid aggregate type {:?}: expected one lower-case word such as \"user\"",
                    agg.aggregate_type
                )));
            }
            if !seen.insert(agg) {
                return Err(StoreError::Invalid(format!(
                    "{agg} appears more than once in one push"
                )));
            }
            if a.events.is_empty() {
                return Err(StoreError::Invalid(format!("no events for {agg}")));
            }
            for e in &a.events {
                if !valid_event_type(&e.event_type) {
                    return Err(StoreError::Invalid(format!(
                        "invalid event type {:?}: expected dotted lower-case words such as \"user.added\"",
                        e.event_type
                    )));
                }
                for (what, part) in [("payload", &e.payload), ("metadata", &e.metadata)] {
                    if !part.is_object() {
                        return Err(StoreError::Invalid(format!(
                            "the {what} of {} must be a JSON object",
                            e.event_type
                        )));
                    }
                }
            }
            for u in a.claim.iter().chain(&a.release) {
                if u.name.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "a unique value of {agg} has no constraint name"
                    )));
                }
            }
        }
        Ok(())
    }
}
