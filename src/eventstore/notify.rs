use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::StoreError;
use super::position::Position;
use super::types::NotifyMode;
use crate::backoff::Backoff;

/// The channel the append trigger (and the coalescer) NOTIFY with the newest position.
pub const EVENTS_CHANNEL: &str = "eventstore_events";

/// At most one cross-process wake-up per this interval in coalesced mode.
const COALESCE_INTERVAL: Duration = Duration::from_millis(5);

pub(crate) struct Waker {
    local: watch::Sender<Position>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Notify,
    latest: Mutex<Position>,
}

impl Waker {
    pub(crate) fn start(pool: Pool, mode: NotifyMode) -> Self {
        let (local, _) = watch::channel(Position::ZERO);
        let shared = Arc::new(Shared {
            pending: Notify::new(),
            latest: Mutex::new(Position::ZERO),
        });
        let task =
            (mode == NotifyMode::Coalesced).then(|| tokio::spawn(coalesce(pool, shared.clone())));
        Waker {
            local,
            shared,
            task,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Position> {
        self.local.subscribe()
    }

    pub(crate) fn wake(&self, pos: Position) {
        if HELD.try_with(|h| h.hold(pos)).is_err() {
            self.wake_local(pos);
        }
        if self.task.is_some() {
            let mut latest = self.shared.latest.lock().unwrap_or_else(|e| e.into_inner());
            if pos > *latest {
                *latest = pos;
            }
            drop(latest);
            self.shared.pending.notify_one();
        }
    }

    fn wake_local(&self, pos: Position) {
        // Every commit wakes the readers, also one below the highest position: it may have
        // been the transaction that held the horizon back.
        self.local.send_modify(|cur| *cur = (*cur).max(pos));
    }

    /// Wakes this process's readers for what the current task's [`holding`] held back.
    pub(crate) fn release(&self) {
        if let Some(pos) = HELD.try_with(|h| h.take()).ok().flatten() {
            self.wake_local(pos);
        }
    }
}

tokio::task_local! {
    static HELD: Arc<Held>;
}

/// The highest position a task pushed while its wake-ups were held.
#[derive(Default)]
struct Held(Mutex<Option<Position>>);

impl Held {
    fn hold(&self, pos: Position) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *held = Some(held.map_or(pos, |p| p.max(pos)));
    }

    fn take(&self) -> Option<Position> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs `f` with the in-process wake-ups of its pushes held back until it calls
/// [`Waker::release`], or ends (also when it is dropped half-way). Other processes are
/// woken as usual.
pub(crate) async fn holding<F: Future>(waker: Arc<Waker>, f: F) -> F::Output {
    struct Release(Arc<Held>, Arc<Waker>);
    impl Drop for Release {
        fn drop(&mut self) {
            if let Some(pos) = self.0.take() {
                self.1.wake_local(pos);
            }
        }
    }
    let held = Arc::new(Held::default());
    let _release = Release(held.clone(), waker);
    HELD.scope(held, f).await
}

impl Drop for Waker {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The coalesced wake-up, committed without waiting for the WAL flush (see [`coalesce`]).
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2), set_config('synchronous_commit', 'off', true)";

/// Sends the coalesced NOTIFY: wakes on the first append after the last one sent, keeps to
/// the interval (appends meanwhile ride along), retries with backoff when the database fails.
async fn coalesce(pool: Pool, shared: Arc<Shared>) {
    let mut last_sent = Instant::now() - COALESCE_INTERVAL;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        shared.pending.notified().await;
        // A deliberate rate limit, not a wait for state.
        tokio::time::sleep_until(last_sent + COALESCE_INTERVAL).await;
        let pos = *shared.latest.lock().unwrap_or_else(|e| e.into_inner());
        let sent = async {
            let client = pool.get().await.map_err(StoreError::from)?;
            // A NOTIFY holds a cluster-wide lock from its commit through the WAL flush, and
            // every live round's commit NOTIFYs too. A wake-up needs no durability (a
            // listener catches up by reading after every reconnect), so its commit does not
            // wait for the flush. Prepared once per connection: unprepared, every wake-up
            // would cost a round trip to parse it first, and a Close.
            let notify = client.prepare_cached(NOTIFY_SQL).await?;
            client
                .execute(&notify, &[&EVENTS_CHANNEL, &pos.to_string()])
                .await
                .map_err(StoreError::from)
        }
        .await;
        last_sent = Instant::now();
        match sent {
            Ok(_) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), position = %pos, "could not send the coalesced wake-up; retrying");
                shared.pending.notify_one();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
