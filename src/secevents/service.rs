//! One process's security events: the wake-ups and the delivery worker.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::eventstore::{EventStore, Position};
use crate::listener::ListenEvent;

use super::options::{DeliveryOptions, PENDING_CHANNEL, RECEIVERS_CHANNEL};
use super::{push, worker};

/// The security events of one process: the wake-ups poll requests wait on, and (unless
/// switched off) the delivery worker.
pub struct SecEvents {
    pub opts: DeliveryOptions,
    changed: watch::Sender<u64>,
    latest: watch::Receiver<Position>,
    tasks: Vec<JoinHandle<()>>,
    /// The worker's pool and name, to give its leases back at shutdown.
    worker: Option<(Pool, String)>,
}

impl Drop for SecEvents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}/{}",
        if host.is_empty() { "node" } else { &host },
        &tag[..8]
    )
}

impl SecEvents {
    pub fn start(
        url: &str,
        pool: Pool,
        store: &EventStore,
        clock: SharedClock,
        opts: DeliveryOptions,
        run_worker: bool,
    ) -> SecEvents {
        let (changed, _) = watch::channel(0u64);
        let (receivers, receivers_rx) = watch::channel(0u64);
        let (latest_tx, latest) = watch::channel(Position::ZERO);
        let channels = vec![
            crate::eventstore::EVENTS_CHANNEL.to_string(),
            RECEIVERS_CHANNEL.to_string(),
            PENDING_CHANNEL.to_string(),
        ];
        let (events, listener) = crate::listener::spawn(url.to_string(), channels, "secevents");
        let wakes = Wakes {
            changed: changed.clone(),
            receivers,
            latest: latest_tx,
        };
        let wake = tokio::spawn(relay(events, store.subscribe(), wakes));
        let mut tasks = vec![listener, wake];
        let mut worker = None;
        if run_worker {
            let me = node_name();
            worker = Some((pool.clone(), me.clone()));
            let ctx = Arc::new(worker::Ctx {
                pool,
                clock,
                pusher: push::Pusher::new(opts.push_timeout),
                opts: opts.clone(),
                me,
                changed: changed.clone(),
                latest: latest.clone(),
            });
            tasks.push(tokio::spawn(worker::supervise(ctx, receivers_rx)));
        }
        SecEvents {
            opts,
            changed,
            latest,
            tasks,
            worker,
        }
    }

    /// Stops delivering and gives this process's leases back, so that another process takes
    /// its receivers over at once rather than when the leases run out (a rolling restart).
    pub async fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let Some((pool, me)) = &self.worker else {
            return;
        };
        let released = async {
            pool.get()
                .await?
                .execute(
                    "UPDATE secevents.receivers SET leased_by = NULL, lease_until = NULL \
                     WHERE leased_by = $1",
                    &[me],
                )
                .await?;
            Ok::<_, super::SecEventsError>(())
        };
        if let Err(e) = released.await {
            tracing::warn!(error = %crate::error_chain(&e), "security events: leases not given back; they run out");
        }
    }

    /// Changes whenever events were appended or SETs queued, here or in another process.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The newest append this process has heard of (its own, or another's NOTIFY).
    pub fn latest(&self) -> Position {
        *self.latest.borrow()
    }

    /// Tells this process's workers to look now (after a registration or a retry here).
    pub fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

struct Wakes {
    changed: watch::Sender<u64>,
    receivers: watch::Sender<u64>,
    latest: watch::Sender<Position>,
}

fn bump(w: &watch::Sender<u64>) {
    w.send_modify(|n| *n = n.wrapping_add(1));
}

/// Turns notifications and local appends into wake-ups, and keeps the newest position heard.
async fn relay(
    mut events: tokio::sync::mpsc::Receiver<ListenEvent>,
    mut local: watch::Receiver<Position>,
    w: Wakes,
) {
    let heard = |p: Position| {
        w.latest
            .send_if_modified(|l| (p > *l).then(|| *l = p).is_some())
    };
    loop {
        tokio::select! {
            e = events.recv() => match e {
                None => return,
                Some(ListenEvent::Notification { channel, payload }) => {
                    if channel == RECEIVERS_CHANNEL {
                        bump(&w.receivers);
                    } else if channel == crate::eventstore::EVENTS_CHANNEL {
                        if let Ok(p) = payload.parse() {
                            heard(p);
                        }
                    }
                    bump(&w.changed);
                }
                // A (re)connect may have missed anything.
                Some(ListenEvent::Connected) => {
                    bump(&w.receivers);
                    bump(&w.changed);
                }
            },
            r = local.changed() => {
                if r.is_err() { return }
                heard(*local.borrow_and_update());
                bump(&w.changed);
            }
        }
    }
}
