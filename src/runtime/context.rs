//! What the runner's tasks share (docs/ARCHITECTURE.md §5): the projections and their
//! pokes, the pool, the options, the wake-up channels, the lock every runner of a projection
//! takes, and what a batch reports. The runner, the live round, the rebuilder and failure
//! isolation all build on it; it imports none of them.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};

use super::ride::Riders;
use super::wait::ProgressHub;
use super::Projection;
use crate::clock::{SharedClock, SystemClock};
use crate::eventstore::{self, EventFilter, EventStore, Position, StoredEvent};

/// One runner applies a projection at a time, across every process: a transaction-scoped
/// advisory lock, which takes no transaction id (so the read below is not held back by it).
pub(crate) const TRY_LOCK_SQL: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended('portcullis.projection/' || $1, 0))";
pub(crate) const LOCK_SQL: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('portcullis.projection/' || $1, 0))";

#[derive(Clone)]
pub struct RunnerOptions {
    /// Events per batch when following live writes (short transactions keep the horizon moving).
    pub live_batch: i64,
    /// Events per batch while catching up.
    pub catchup_batch: i64,
    /// The slow tick that only covers lost wake-ups.
    pub fallback_tick: Duration,
    /// Failures after which an event is dead-lettered and skipped.
    pub max_attempts: i32,
    /// Backoff between attempts at a failing event: base * 2^(failures-1), capped.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A model at position zero whose log holds at least this many events of its types is
    /// filled by a rebuild (a copy without its secondary indexes, built in bulk at the end)
    /// instead of in place; `None` fills every model in place.
    pub rebuild_from_zero_at: Option<i64>,
    pub clock: SharedClock,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            live_batch: 100,
            catchup_batch: 2000,
            fallback_tick: Duration::from_secs(5),
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            rebuild_from_zero_at: Some(50_000),
            clock: Arc::new(SystemClock),
        }
    }
}

impl RunnerOptions {
    pub(super) fn retry_delay(&self, failures: i32) -> Duration {
        crate::backoff::Backoff::new(self.retry_base, self.retry_max).nth(failures.max(1) as u32)
    }
}

pub(super) struct Inner {
    pub(super) pool: Pool,
    pub(super) store: EventStore,
    pub(super) hub: ProgressHub,
    pub(super) opts: RunnerOptions,
    pub(super) projections: Vec<(Arc<dyn Projection>, Arc<Notify>)>,
    /// Per projection: its runner is catching up on its own (the live round leaves it be).
    pub(super) catching_up: Vec<AtomicBool>,
    /// Bumped after every batch commit: a runner whose read stopped short of the horizon
    /// may have been held back by that transaction.
    pub(super) commits: watch::Sender<u64>,
    /// Bumped when a rebuild is asked for, here or in another process.
    pub(super) rebuilds: watch::Sender<u64>,
    /// Reads that ride along the live round's COMMIT.
    pub(super) riders: Riders,
    /// No other process's progress hub listened at the last live round: the live round may
    /// then apply this process's own events without reading them (`live::known`).
    pub(super) alone: AtomicBool,
    pub(super) known_rounds: KnownRounds,
}

/// How many live rounds applied known events, and how many found others in between.
#[derive(Default)]
pub(super) struct KnownRounds {
    pub(super) applied: AtomicU64,
    pub(super) declined: AtomicU64,
}

impl Inner {
    pub(super) fn poke_all(&self) {
        for (_, poke) in &self.projections {
            poke.notify_one();
        }
    }
}

/// What the wake-up listener last heard: how many times it (re)connected, and the highest
/// position another process announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RemoteWake {
    pub(super) connects: u64,
    pub(super) position: Position,
}

/// What a batch did: how far it got, the last event it applied, and why it stopped early.
pub(super) struct Progress<'a> {
    pub(super) position: Position,
    pub(super) applied: i64,
    pub(super) last: Option<&'a StoredEvent>,
    /// Stopped before the end of what was read: at a failing event's backoff (`Some`).
    pub(super) stopped: Option<Duration>,
}

/// The batch after `at` (when catching up), read on a connection that is free now: runners
/// that each held one and waited for a second could starve one another. `None` when there
/// is none free, or the read fails (the next batch then reads for itself).
pub(super) async fn read_ahead(
    inner: &Inner,
    at: Option<Position>,
    filter: &EventFilter,
    limit: i64,
) -> Option<(Position, eventstore::Batch)> {
    let at = at?;
    let mut now = inner.pool.timeouts();
    now.wait = Some(Duration::ZERO);
    let client = inner.pool.timeout_get(&now).await.ok()?;
    let batch = eventstore::read_batch(&client, at, filter, limit)
        .await
        .ok()?;
    Some((at, batch))
}

/// Lets go of a batch that was applied. Freeing a catch-up batch (thousands of events, each
/// a tree of JSON) takes milliseconds that a runner need not wait for before its next batch.
pub(super) fn release(batch: eventstore::Batch) {
    if batch.events.len() >= RELEASE_OFF_PATH {
        tokio::task::spawn_blocking(move || drop(batch));
    }
}

/// Batches at least this long are freed on a blocking thread (see [`release`]).
const RELEASE_OFF_PATH: usize = 256;
