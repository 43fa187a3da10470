//! ProgressHub: one LISTEN connection per process on `projection_progress` and a watch
//! channel per projection. A waiter subscribes, then checks, then awaits: no queries in the
//! steady state, and no wake-up can slip between the check and the wait (docs/ARCHITECTURE.md §6).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::ProjectionError;
use crate::eventstore::Position;
use crate::listener::{self, ListenEvent};

pub const PROGRESS_CHANNEL: &str = "projection_progress";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error(
        "projection {projection} has reached {position}, not {target}, after waiting {waited:?}"
    )]
    Timeout {
        projection: String,
        position: Position,
        target: Position,
        waited: Duration,
    },
    /// The hub had seen `target`, but the database holds the read model at `position`: a
    /// crash of PostgreSQL took batches that were announced before their commit was durable
    /// (where the cluster commits asynchronously; they are applied again from the log).
    #[error("projection {projection} is at {position} in the database, behind {target} that was announced before PostgreSQL restarted")]
    RolledBack {
        projection: String,
        position: Position,
        target: Position,
    },
}

/// Confirms in the database what the hub announced: each of `names` has reached `target`
/// in the state that moves with its read model. A read that relies on a position runs this
/// first on its own connection (pipelined): the state only moves forward until a crash, and
/// a crash ends that connection, so the read that follows sees at least `target`.
pub async fn confirm_reached<C: deadpool_postgres::GenericClient>(
    client: &C,
    names: &[&str],
    target: Position,
) -> Result<Result<(), WaitError>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT name, position_tx, position_seq FROM projections.projection_states \
              WHERE name = ANY($1) AND (position_tx, position_seq) < ($2, $3) LIMIT 1",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&names, &target.tx_sql(), &target.seq])
        .await?;
    Ok(match row {
        None => Ok(()),
        Some(r) => Err(WaitError::RolledBack {
            projection: r.get(0),
            position: Position::from_sql(r.get(1), r.get(2)),
            target,
        }),
    })
}

#[derive(Clone)]
pub struct ProgressHub {
    inner: Arc<Inner>,
}

struct Inner {
    watches: Mutex<HashMap<String, watch::Sender<Position>>>,
    /// Bumped by every local reset: a runner's publish from before it is stale.
    resets: Mutex<HashMap<String, u64>>,
    /// Per projection: a generation bumped whenever its read model may have changed (events
    /// applied here or elsewhere, a reset, a reconnect), and the events_applied count last
    /// announced. A position that only moved to the horizon leaves the generation alone.
    changes: Mutex<HashMap<String, (u64, i64)>>,
    /// Projections whose read model is incomplete: reset and not yet caught up with the log
    /// as it was at the reset.
    incomplete: Mutex<std::collections::HashSet<String>>,
    /// Projections this process is resetting whose reset has not come back as a notification
    /// yet: what arrives before it was committed before the reset (notifications come in
    /// commit order) and must not raise the position or mark the model complete again.
    rewinding: Mutex<std::collections::HashSet<String>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    connects: watch::Sender<u64>,
    /// Names this hub in projections.progress_hubs: while no other process's hub is there,
    /// this process's live rounds send no progress NOTIFY (V26).
    id: Uuid,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in [&self.listener, &self.task] {
            if let Some(t) = t.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
    }
}

/// The `outcome` label of `portcullis_wait_for_position_seconds`.
const WAIT_OUTCOMES: [&str; 2] = ["reached", "timeout"];

impl ProgressHub {
    /// Starts listening and returns once the current positions are loaded.
    pub async fn start(url: &str, pool: Pool) -> Result<ProgressHub, ProjectionError> {
        let (connects, _) = watch::channel(0u64);
        let hub = ProgressHub {
            inner: Arc::new(Inner {
                watches: Mutex::new(HashMap::new()),
                resets: Mutex::new(HashMap::new()),
                changes: Mutex::new(HashMap::new()),
                incomplete: Mutex::new(Default::default()),
                rewinding: Mutex::new(Default::default()),
                listener: Mutex::new(None),
                task: Mutex::new(None),
                connects,
                id: Uuid::new_v4(),
            }),
        };
        let mut connected = hub.inner.connects.subscribe();
        // Registered once listening, then every round that looked for hubs before is waited
        // out: the reload below sees what those rounds committed without announcing it.
        let (mut events, listener) = listener::spawn_then(
            url.to_string(),
            vec![PROGRESS_CHANNEL.into()],
            "progress hub",
            vec![
                format!(
                    "SELECT projections.register_progress_hub('{}')",
                    hub.inner.id
                ),
                "SELECT projections.progress_hubs_settled()".into(),
            ],
        );
        let weak = Arc::downgrade(&hub.inner);
        let task = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                let hub = ProgressHub { inner };
                match ev {
                    ListenEvent::Connected => {
                        // Anything may have been missed while disconnected: reload it all.
                        match hub.reload(&pool).await {
                            Ok(()) => hub.inner.connects.send_modify(|n| *n += 1),
                            Err(e) => {
                                tracing::warn!(error = %crate::error_chain(&e), "progress hub could not reload positions")
                            }
                        }
                    }
                    ListenEvent::Notification { payload, .. } => hub.apply_notification(&payload),
                }
            }
        });
        *hub.inner.listener.lock().unwrap() = Some(listener);
        *hub.inner.task.lock().unwrap() = Some(task);
        // The first load, so early waiters compare against real positions.
        let _ = tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|n| *n > 0)).await;
        Ok(hub)
    }

    /// A projection waits will be asked of: its wait series exist from now on (at 0), not
    /// from its first wait, so `rate()` sees the first timeout.
    pub fn expect(&self, name: &str) {
        let waits = &crate::metrics::metrics().wait_seconds;
        for outcome in WAIT_OUTCOMES {
            waits.with_label_values(&[name, outcome]);
        }
    }

    /// This hub's id in projections.progress_hubs.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// How many times the hub has (re)connected and reloaded; for tests and metrics.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.inner.connects.subscribe()
    }

    async fn reload(&self, pool: &Pool) -> Result<(), ProjectionError> {
        let client = pool.get().await?;
        let rows = client
            .query(
                "SELECT name, position_tx, position_seq, complete_at_tx IS NOT NULL \
                   FROM projections.projection_states",
                &[],
            )
            .await?;
        // The database is the truth from here: no notification is awaited any more.
        self.rewinding_set().clear();
        for r in rows {
            let name: String = r.get(0);
            self.expect(&name);
            self.set(&name, Position::from_sql(r.get(1), r.get(2)));
            self.changed(&name, None);
            self.mark_incomplete(&name, r.get(3));
        }
        Ok(())
    }

    /// The read model of `name` may have changed; `applied` is the events_applied count a
    /// notification announced (a bump only when it differs from the last one), `None` for
    /// a change known otherwise.
    fn changed(&self, name: &str, applied: Option<i64>) {
        let mut c = self.inner.changes.lock().unwrap_or_else(|e| e.into_inner());
        let entry = c.entry(name.to_string()).or_insert((0, -1));
        match applied {
            Some(n) if n == entry.1 => {}
            Some(n) => *entry = (entry.0 + 1, n),
            None => entry.0 += 1,
        }
    }

    fn mark_incomplete(&self, name: &str, incomplete: bool) {
        let mut set = self
            .inner
            .incomplete
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if incomplete {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
    }

    /// Whether the projection's read model holds everything up to its position: false after
    /// a reset until it has caught up with the log as it was then (reads must not use it).
    pub fn is_complete(&self, name: &str) -> bool {
        let set = self
            .inner
            .incomplete
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        !set.contains(name)
    }

    /// A generation of the projection's read model: it changes whenever the model may have
    /// (for caches of it), not when the position only moved past events of other types.
    pub fn generation(&self, name: &str) -> u64 {
        let c = self.inner.changes.lock().unwrap_or_else(|e| e.into_inner());
        c.get(name).map(|e| e.0).unwrap_or(0)
    }

    /// The local runner applied events to the projection (published before its NOTIFY
    /// arrives, so a cache never outlives the change in this process).
    pub fn applied(&self, name: &str) {
        self.changed(name, None);
    }

    fn rewinding_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .rewinding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn apply_notification(&self, payload: &str) {
        // name/tx/seq/events_applied/incomplete (name/tx/seq before V10); names
        // contain no slash.
        let mut parts = payload.splitn(5, '/');
        let (Some(name), Some(tx), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        {
            let mut rewinding = self.rewinding_set();
            if rewinding.contains(name) {
                // Older than this process's reset, unless it is the reset's own (position 0).
                if (tx, seq) != ("0", "0") {
                    return;
                }
                rewinding.remove(name);
            }
        }
        let applied = parts.next().and_then(|n| n.parse::<i64>().ok());
        self.changed(name, applied);
        if let Some(flag) = parts.next() {
            self.mark_incomplete(name, flag == "1");
        }
        match format!("{tx}/{seq}").parse::<Position>() {
            // A reset rewinds to zero: the read model is empty again.
            Ok(Position::ZERO) => self.set(name, Position::ZERO),
            Ok(p) => self.publish(name, p),
            Err(_) => tracing::warn!(payload, "malformed projection_progress payload"),
        }
    }

    fn sender(&self, name: &str) -> watch::Sender<Position> {
        let mut w = self.inner.watches.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(name.to_string())
            .or_insert_with(|| watch::channel(Position::ZERO).0)
            .clone()
    }

    /// Runs `reset`, a reset of the projection in this process, and rewinds the hub after it.
    /// Until the reset's own notification comes back, the ones before it are stale; the hub
    /// is told before the reset starts, since that notification may arrive before the reset's
    /// caller hears of its commit.
    pub async fn rewind<E>(
        &self,
        name: &str,
        reset: impl std::future::Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        self.rewinding_set().insert(name.to_string());
        if let Err(e) = reset.await {
            self.rewinding_set().remove(name);
            return Err(e);
        }
        self.rewound(name);
        Ok(())
    }

    /// The projection was reset: its read model is empty until it replays.
    fn rewound(&self, name: &str) {
        *self
            .inner
            .resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
        self.changed(name, None);
        // Until its own NOTIFY says how far the log went at the reset.
        self.mark_incomplete(name, true);
        self.set(name, Position::ZERO);
    }

    /// How many times this process reset the projection; see [`ProgressHub::publish_since`].
    pub fn resets(&self, name: &str) -> u64 {
        self.inner
            .resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Publishes what a batch that started when [`ProgressHub::resets`] said `resets`
    /// committed, unless a reset came in between (its position would be stale).
    pub fn publish_since(&self, name: &str, pos: Position, resets: u64) {
        if self.resets(name) == resets {
            self.publish(name, pos);
        }
    }

    fn set(&self, name: &str, pos: Position) {
        self.sender(name).send_if_modified(|cur| {
            let changed = *cur != pos;
            *cur = pos;
            changed
        });
    }

    /// A projection committed `pos` (called by the local runner right after its commit).
    pub fn publish(&self, name: &str, pos: Position) {
        self.sender(name).send_if_modified(|cur| {
            if pos > *cur {
                *cur = pos;
                true
            } else {
                false
            }
        });
    }

    /// The last position this process knows the projection committed.
    pub fn current(&self, name: &str) -> Position {
        *self.sender(name).borrow()
    }

    /// Returns as soon as `projection` has committed `target` or beyond.
    pub async fn wait_for_position(
        &self,
        projection: &str,
        target: Position,
        timeout: Duration,
    ) -> Result<Position, WaitError> {
        let start = tokio::time::Instant::now();
        self.wait_until(projection, target, start + timeout, start)
            .await
    }

    /// Returns once every one of `projections` has committed `target` or beyond.
    pub async fn wait_for_all(
        &self,
        projections: &[&str],
        target: Position,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        for p in projections {
            self.wait_until(p, target, deadline, start).await?;
        }
        Ok(())
    }

    async fn wait_until(
        &self,
        projection: &str,
        target: Position,
        deadline: tokio::time::Instant,
        start: tokio::time::Instant,
    ) -> Result<Position, WaitError> {
        let mut rx = self.sender(projection).subscribe();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= target))
            .await
            .map(|r| r.map(|p| *p));
        let outcome = WAIT_OUTCOMES[usize::from(!matches!(reached, Ok(Ok(_))))];
        crate::metrics::metrics()
            .wait_seconds
            .with_label_values(&[projection, outcome])
            .observe(start.elapsed().as_secs_f64());
        match reached {
            Ok(Ok(p)) => Ok(p),
            _ => Err(WaitError::Timeout {
                projection: projection.to_string(),
                position: *rx.borrow(),
                target,
                waited: start.elapsed(),
            }),
        }
    }
}
