//! Delivery in the background. A supervisor leases receivers (`FOR UPDATE SKIP LOCKED`,
//! then a lease it renews, so no transaction stays open while a receiver answers) and runs
//! one task per leased receiver: fill its queue from the log, push what waits (push
//! receivers), then wait for new events or the end of a backoff. One receiver that is slow
//! or down never delays another, nor any write. A node that dies loses its leases when they
//! run out, and another node takes over from the checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::error::SecEventsError;
use super::feed;
use super::options::DeliveryOptions;
use super::push::{self, Pushed, Pusher};
use super::receivers::Delivery;
use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::eventstore::Position;

/// Receivers one process delivers for at most.
const MAX_LEASED: i64 = 1000;
/// Fill batches per wake-up, before the receiver's pushes get a turn.
const FILL_ROUNDS: usize = 20;

pub(super) struct Ctx {
    pub pool: Pool,
    pub clock: SharedClock,
    pub opts: DeliveryOptions,
    pub pusher: Pusher,
    pub me: String,
    /// Bumped whenever events or SETs may have arrived.
    pub changed: watch::Sender<u64>,
    /// The newest append heard of.
    pub latest: watch::Receiver<Position>,
}

impl Ctx {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// Renews this process's leases, then takes free ones; returns what it holds. Leases run on
/// the database's clock, the one all nodes share.
async fn lease(ctx: &Ctx) -> Result<Vec<(Uuid, Delivery)>, SecEventsError> {
    let client = ctx.pool.get().await?;
    let secs = ctx.opts.lease.as_secs_f64();
    let rows = client
        .query(
            "UPDATE secevents.receivers SET lease_until = now() + make_interval(secs => $2) \
              WHERE leased_by = $1 RETURNING id, delivery",
            &[&ctx.me, &secs],
        )
        .await?;
    let mut held: Vec<(Uuid, Delivery)> = rows.iter().map(row).collect();
    let taken = client
        .query(
            "UPDATE secevents.receivers r \
                SET leased_by = $1, lease_until = now() + make_interval(secs => $2) \
              WHERE r.id IN (SELECT id FROM secevents.receivers \
                              WHERE leased_by IS NULL OR lease_until < now() \
                              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, delivery",
            &[&ctx.me, &secs, &(MAX_LEASED - held.len() as i64).max(0)],
        )
        .await?;
    held.extend(taken.iter().map(row));
    Ok(held)
}

fn row(r: &tokio_postgres::Row) -> (Uuid, Delivery) {
    (r.get(0), Delivery::parse(r.get(1)))
}

/// Keeps a task per leased receiver until the process stops.
pub(super) async fn supervise(ctx: Arc<Ctx>, mut receivers: watch::Receiver<u64>) {
    let mut tasks: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        receivers.borrow_and_update();
        let pause = match lease(&ctx).await {
            Ok(held) => {
                retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                let keep: HashMap<Uuid, Delivery> = held.into_iter().collect();
                tasks.retain(|id, t| {
                    let live = keep.contains_key(id) && !t.is_finished();
                    if !live {
                        t.abort();
                    }
                    live
                });
                for (id, delivery) in keep {
                    tasks
                        .entry(id)
                        .or_insert_with(|| tokio::spawn(serve(ctx.clone(), id, delivery)));
                }
                ctx.opts.lease / 3
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "security events: cannot lease receivers");
                retry.next_delay()
            }
        };
        tokio::select! {
            r = receivers.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(pause) => {} // lease renewal timer, not a wait for state
        }
    }
    for t in tasks.values() {
        t.abort();
    }
}

/// One step for one receiver: fill, then push what waits; says when to look again without
/// a wake-up, or that the receiver is not this process's now.
async fn step(ctx: &Ctx, id: Uuid, delivery: Delivery) -> Result<Step, SecEventsError> {
    let latest = *ctx.latest.borrow();
    let filled = feed::fill_up(&ctx.pool, id, &ctx.opts.public_url, ctx.now(), FILL_ROUNDS).await?;
    let behind = filled.behind(latest);
    if delivery == Delivery::Poll {
        return Ok(Step::Wait {
            until: None,
            behind,
        });
    }
    let backoff = Backoff::new(ctx.opts.retry_base, ctx.opts.retry_max);
    loop {
        let until =
            match push::round(&ctx.pool, &ctx.pusher, id, &ctx.me, &backoff, ctx.now()).await? {
                Pushed::More => continue,
                Pushed::Drained => None,
                Pushed::BackingOff(t) => Some(t),
                Pushed::NotOurs => return Ok(Step::Stop),
            };
        return Ok(Step::Wait { until, behind });
    }
}

enum Step {
    /// Until a wake-up, or `until`; soon when an open transaction held the horizon below an
    /// append it was woken for (that append's wake-up has passed).
    Wait {
        until: Option<DateTime<Utc>>,
        behind: bool,
    },
    Stop,
}

async fn serve(ctx: Arc<Ctx>, id: Uuid, delivery: Delivery) {
    let mut changed = ctx.changed.subscribe();
    let fresh = || Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut errors = fresh();
    let mut horizon = Backoff::new(Duration::from_millis(1), Duration::from_millis(100));
    loop {
        changed.borrow_and_update();
        let pause = match step(&ctx, id, delivery).await {
            Ok(Step::Stop) | Err(SecEventsError::NoSuchReceiver(_)) => return,
            Ok(Step::Wait { until, behind }) => {
                errors = fresh();
                let until = until.map(|t| (t - ctx.now()).to_std().unwrap_or(Duration::ZERO));
                if behind {
                    let soon = horizon.next_delay();
                    Some(until.map_or(soon, |u| u.min(soon)))
                } else {
                    horizon.reset();
                    until
                }
            }
            Err(e) => {
                tracing::warn!(receiver = %id, error = %crate::error_chain(&e), "security events: delivery step failed");
                Some(errors.next_delay())
            }
        };
        // A backoff's timer, not a wait for state: new events wake it at once.
        let timer = tokio::time::sleep(pause.unwrap_or(ctx.opts.lease));
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = timer => {}
        }
    }
}
